//! Behaviour of the store API on real files, and the same operations on the simulated disk.

use lior::store::{
    Class, Cursor, FileStore, LookupId, MessageId, MessageMeta, QueueId, QueueQuota, QueueStore,
    QuotaKind, Select, SimDisk, SimStore, Store, StoreConfig, StoreError, UringDisk, EXPIRY_NEVER,
};

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        message_bytes_max: 8 << 10,
        compact_segments_min: 3,
        removal_reserve_bytes: 2 << 10,
        compact_live_percent: 30,
        ..StoreConfig::default()
    }
}

fn meta(prio: u8, id: u32, class: Class) -> MessageMeta {
    let mut m = [7u8; 20];
    m[16..].copy_from_slice(&id.to_le_bytes());
    MessageMeta {
        priority: prio,
        class,
        message_id: MessageId(m),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

fn commit<S: QueueStore>(s: &mut S) {
    s.flush().unwrap();
    s.poll_durable(true).unwrap();
}

fn open_file(dir: &std::path::Path) -> FileStore {
    Store::open(UringDisk::open(dir).unwrap(), cfg()).unwrap().0
}

fn walk<S: QueueStore>(s: &S, q: QueueId) -> Vec<(u8, u64, Vec<u8>)> {
    let mut c = Cursor::new(q);
    let mut out = Vec::new();
    while let Some(m) = s.cursor_next(&mut c) {
        out.push((m.meta.priority, m.lookup_id.0, m.bytes.to_vec()));
    }
    out
}

#[test]
fn priority_order_receive_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId(1);
    let mut s = open_file(dir.path());
    let a = s.append(q, &meta(3, 1, Class::Recoverable), b"a").unwrap();
    let b = s.append(q, &meta(5, 2, Class::Recoverable), b"b").unwrap();
    let c = s
        .append(q, &meta(3, 3, Class::Transactional), b"c")
        .unwrap();
    // Not durable: not visible yet.
    assert!(!s.is_durable(a.ticket));
    assert!(s.peek(q, Select::Front).is_none());
    commit(&mut s);
    assert!(s.is_durable(c.ticket));
    assert_eq!(s.peek(q, Select::Front).unwrap().bytes, b"b");
    assert_eq!(s.peek(q, Select::Lookup(c.lookup_id)).unwrap().bytes, b"c");
    assert_eq!(
        s.peek(q, Select::MessageId(meta(0, 1, Class::Express).message_id))
            .unwrap()
            .bytes,
        b"a"
    );
    assert!(a.lookup_id < b.lookup_id && b.lookup_id < c.lookup_id);
    let r = s.receive(q, Select::Front).unwrap().unwrap();
    assert_eq!(r.lookup_id, b.lookup_id);
    assert_eq!(s.reserved(&r), Err(StoreError::NotDurable));
    commit(&mut s);
    assert_eq!(s.reserved(&r).unwrap().bytes, b"b");
    s.release(r).unwrap();
    assert_eq!(
        walk(&s, q).iter().map(|m| m.2.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    drop(s);
    let s = open_file(dir.path());
    assert_eq!(
        walk(&s, q),
        vec![
            (3, a.lookup_id.0, b"a".to_vec()),
            (3, c.lookup_id.0, b"c".to_vec())
        ]
    );
    // Lookup ids keep increasing after a restart.
    let mut s = s;
    let d = s.append(q, &meta(0, 4, Class::Recoverable), b"d").unwrap();
    assert!(d.lookup_id > c.lookup_id);
}

#[test]
fn express_is_immediate_and_not_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId(2);
    let mut s = open_file(dir.path());
    let e = s.append(q, &meta(1, 1, Class::Express), b"x").unwrap();
    assert!(s.is_durable(e.ticket));
    let r = s.receive(q, Select::Front).unwrap().unwrap();
    assert_eq!(s.reserved(&r).unwrap().bytes, b"x");
    s.release(r).unwrap();
    s.append(q, &meta(1, 2, Class::Express), b"y").unwrap();
    drop(s);
    let s = open_file(dir.path());
    assert!(s.peek(q, Select::Front).is_none());
}

#[test]
fn quotas_name_the_limit_and_harm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId(3);
    let mut s = open_file(dir.path());
    s.set_queue_quota(
        q,
        QueueQuota {
            bytes_max: 10,
            messages_max: 100,
        },
    );
    s.append(q, &meta(1, 1, Class::Recoverable), b"123456")
        .unwrap();
    let err = s
        .append(q, &meta(1, 2, Class::Recoverable), b"123456")
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Quota {
            kind: QuotaKind::QueueBytes,
            used: 6,
            limit: 10
        }
    );
    assert!(err.to_string().contains("QueueBytes") && err.to_string().contains("6 used of 10"));
    s.set_queue_quota(
        q,
        QueueQuota {
            bytes_max: 100,
            messages_max: 1,
        },
    );
    assert!(matches!(
        s.append(q, &meta(1, 2, Class::Recoverable), b"1"),
        Err(StoreError::Quota {
            kind: QuotaKind::QueueMessages,
            used: 1,
            limit: 1
        })
    ));
    commit(&mut s);
    assert_eq!(s.queue_len(q), (1, 6));
    assert_eq!(s.peek(q, Select::Front).unwrap().bytes, b"123456");
}

#[test]
fn purge_delete_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (q1, q2) = (QueueId(1), QueueId(2));
    let mut s = open_file(dir.path());
    let mut m = meta(2, 1, Class::Recoverable);
    m.expiry_unix_s = 100;
    let old = s.append(q1, &m, b"old").unwrap();
    s.append(q1, &meta(2, 2, Class::Recoverable), b"new")
        .unwrap();
    s.append(q2, &meta(2, 3, Class::Recoverable), b"q2")
        .unwrap();
    commit(&mut s);
    let mut exp = Vec::new();
    s.expired(99, 10, &mut exp);
    assert!(exp.is_empty());
    s.expired(100, 10, &mut exp);
    assert_eq!(exp, vec![(q1, old.lookup_id)]);
    let t = s.purge(q1).unwrap();
    assert!(s.peek(q1, Select::Front).is_none());
    s.flush().unwrap();
    assert!(s.poll_durable(true).unwrap() > t);
    s.delete_queue(q2).unwrap();
    commit(&mut s);
    drop(s);
    let s = open_file(dir.path());
    assert_eq!(s.stats().messages, 0);
    assert!(s.peek(q2, Select::Front).is_none());
}

#[test]
fn consumed_segments_are_reclaimed_and_old_messages_copied_forward() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId(1);
    let mut s = open_file(dir.path());
    let pinned = s
        .append(q, &meta(0, 0, Class::Recoverable), b"old and unconsumed")
        .unwrap();
    commit(&mut s);
    let body = [1u8; 1000];
    let mut max_segments = 0;
    for i in 0..2000u32 {
        s.append(q, &meta(4, i + 1, Class::Recoverable), &body)
            .unwrap();
        if i % 8 == 7 {
            commit(&mut s);
            while let Some(r) = s.receive(q, Select::Front).unwrap() {
                if r.lookup_id == pinned.lookup_id {
                    unreachable!("priority 0 message must come last");
                }
                commit(&mut s);
                s.release(r).unwrap();
                if s.peek(q, Select::Front).map(|m| m.meta.priority) == Some(0) {
                    break;
                }
            }
            commit(&mut s);
            s.maintain().unwrap();
            max_segments = max_segments.max(s.stats().segments);
        }
    }
    // 2 MB went through 64 KiB segments; one old message must not pin them all.
    assert!(max_segments <= 6, "segments grew to {max_segments}");
    assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 12);
    drop(s);
    let s = open_file(dir.path());
    assert_eq!(
        walk(&s, q),
        vec![(0, pinned.lookup_id.0, b"old and unconsumed".to_vec())]
    );
}

#[test]
fn receive_by_lookup_and_message_id_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId(9);
    let mut s = open_file(dir.path());
    let ids: Vec<_> = (0..5u32)
        .map(|i| {
            s.append(q, &meta((i % 2) as u8, i, Class::Recoverable), &[i as u8])
                .unwrap()
        })
        .collect();
    commit(&mut s);
    let mut c = Cursor::new(q);
    let order: Vec<u8> = std::iter::from_fn(|| s.cursor_next(&mut c).map(|m| m.bytes[0])).collect();
    assert_eq!(order, vec![1, 3, 0, 2, 4]);
    let r = s
        .receive(q, Select::Lookup(ids[2].lookup_id))
        .unwrap()
        .unwrap();
    assert_eq!(r.lookup_id, ids[2].lookup_id);
    let r2 = s
        .receive(q, Select::MessageId(meta(0, 3, Class::Express).message_id))
        .unwrap()
        .unwrap();
    assert_eq!(r2.lookup_id, ids[3].lookup_id);
    assert!(s
        .receive(q, Select::Lookup(LookupId(ids[2].lookup_id.0)))
        .unwrap()
        .is_none());
    commit(&mut s);
    s.release(r).unwrap();
    s.release(r2).unwrap();
    drop(s);
    let s = open_file(dir.path());
    let mut c = Cursor::new(q);
    let order: Vec<u8> = std::iter::from_fn(|| s.cursor_next(&mut c).map(|m| m.bytes[0])).collect();
    assert_eq!(order, vec![1, 0, 4]);
}

/// Drive both implementations with one operation sequence and compare what a caller sees.
fn script<S: QueueStore>(s: &mut S, seed: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut x = seed | 1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut held = Vec::new();
    for step in 0..3000u32 {
        let q = QueueId((rnd() % 3) as u32);
        match rnd() % 10 {
            0..=4 => {
                let class = if rnd() % 5 == 0 {
                    Class::Express
                } else {
                    Class::Recoverable
                };
                let len = (rnd() % 300) as usize;
                let r = s.append(
                    q,
                    &meta((rnd() % 8) as u8, step, class),
                    &vec![step as u8; len],
                );
                out.push(format!("append {r:?}"));
            }
            5 | 6 => {
                let r = s.receive(q, Select::Front);
                out.push(format!("receive {r:?}"));
                if let Ok(Some(r)) = r {
                    held.push(r);
                }
            }
            7 => {
                let p = s
                    .peek(q, Select::Front)
                    .map(|m| (m.lookup_id, m.bytes.len()));
                out.push(format!("peek {p:?}"));
            }
            8 => {
                s.flush().unwrap();
                // A full batch may have been submitted mid-turn: wait until all is durable.
                let mut d = s.poll_durable(true);
                while s.stats().pending_bytes > 0 || held.iter().any(|r| !s.is_durable(r.ticket)) {
                    s.flush().unwrap();
                    d = s.poll_durable(true);
                }
                out.push(format!("durable {d:?}"));
                for r in held.drain(..) {
                    out.push(format!("got {:?}", s.reserved(&r).map(|m| m.bytes.len())));
                    s.release(r).unwrap();
                }
            }
            _ => {
                if rnd() % 50 == 0 {
                    out.push(format!("purge {:?}", s.purge(q)));
                }
                out.push(format!("maintain {:?}", s.maintain()));
            }
        }
    }
    out.push(format!("stats {:?}", s.stats()));
    out
}

#[test]
fn file_and_sim_behave_identically() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut f = open_file(dir.path());
        let mut disk = SimDisk::new(seed);
        disk.faults.complete_percent = 100;
        let mut m: SimStore = Store::open(disk, cfg()).unwrap().0;
        let a = script(&mut f, seed);
        let b = script(&mut m, seed);
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed} step {i}");
        }
    }
}
