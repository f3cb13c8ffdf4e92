//! Outgoing queues: messages for remote queue managers wait here until a session to the
//! destination carries them and the peer acknowledges them (MS-MQQB 3.1.7.1). Opening a remote
//! queue for sending makes no contact with the remote machine; the message is stored at once.
//!
//! One outgoing queue per destination machine (protocol and address of a direct format name).
//! Its messages live in the store partition of the shard that owns the destination, under a
//! store queue id from this table, so recoverable outgoing messages survive a crash and are
//! sent again after a restart. The table is persisted (`outgoing.json`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::identity::write_atomic;
use crate::wire::format_name::{DirectAddress, DirectName};

/// File of the table in the data directory.
pub const OUTGOING_FILE: &str = "outgoing.json";
/// Store queue ids of outgoing queues start here (outside private numbers and system ids).
pub const OUTGOING_ID_BASE: u32 = 0xFFFE_0000;
/// Outgoing queues at most (a named bound: one per remote machine).
pub const OUTGOING_QUEUES_MAX: usize = 4_096;
/// Outgoing tables whose snapshot one thread keeps a copy of (more than one only where a
/// process runs several queue managers: tests).
pub const OUTGOING_SNAPSHOTS_PER_THREAD_MAX: usize = 8;

/// How an outgoing queue can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// MS-MQQB over TCP to an address or a host name, port 1801 (`remote_port`).
    Mqqb,
    /// SRMP over HTTP or HTTPS (`qm::srmp_out`): one POST per message.
    Http,
    /// IPX/SPX: not supported on Linux; kept, never sent.
    Ipx,
}

/// One outgoing queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingDef {
    /// Store queue id.
    pub id: u32,
    /// `TCP:192.0.2.10`, `OS:winbox`, `HTTP:host` (lower case).
    pub key: String,
    /// The host part, as given (an IP literal or a name to resolve).
    pub host: String,
    pub transport: Transport,
    /// The shard (and store partition) that owns it.
    pub shard: usize,
    /// The last outgoing transactional sequence id used for this destination: a new sequence
    /// must be higher than every earlier one (the receiver refuses a lower or equal one), even
    /// after a restart within the same second or a clock step back.
    #[serde(default)]
    pub tx_sequence_id: u64,
    /// Paused by an administrator (`lior outgoing pause`): nothing is sent, the session is
    /// closed, messages keep waiting; kept across restarts.
    #[serde(default)]
    pub paused: bool,
    /// HTTP and HTTPS: the port the format name gives (part of the key), if any.
    #[serde(default)]
    pub port: Option<u16>,
}

impl OutgoingDef {
    /// Whether SRMP to this destination goes over HTTPS.
    pub fn https(&self) -> bool {
        self.key.starts_with("HTTPS:")
    }
}

/// Why a destination cannot get an outgoing queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingError {
    Full(usize),
    Io(String),
}

impl std::fmt::Display for OutgoingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutgoingError::Full(n) => write!(f, "too many outgoing queues ({n})"),
            OutgoingError::Io(e) => write!(f, "cannot save the outgoing queue table: {e}"),
        }
    }
}

/// The key and transport of a direct name's machine.
pub fn destination_of(d: &DirectName) -> (String, String, Transport) {
    let host = d.host().to_string();
    // HTTP(S) names carry their own port: one outgoing queue per host and port.
    let port = match &d.address {
        DirectAddress::Http { port: Some(p), .. } | DirectAddress::Https { port: Some(p), .. } => {
            format!(":{p}")
        }
        _ => String::new(),
    };
    let (proto, transport) = match &d.address {
        DirectAddress::Tcp(_) => ("TCP", Transport::Mqqb),
        DirectAddress::Os(_) => ("OS", Transport::Mqqb),
        DirectAddress::Http { .. } => ("HTTP", Transport::Http),
        DirectAddress::Https { .. } => ("HTTPS", Transport::Http),
        DirectAddress::Ipx(_) | DirectAddress::Spx(_) => ("IPX", Transport::Ipx),
    };
    (
        format!("{proto}:{}{port}", host.to_ascii_lowercase()),
        host,
        transport,
    )
}

/// The persisted table of outgoing queues.
#[derive(Debug)]
pub struct OutgoingTable {
    path: PathBuf,
    shards: usize,
    by_key: BTreeMap<String, OutgoingDef>,
}

#[derive(Serialize, Deserialize, Default)]
struct TableFile {
    queues: Vec<OutgoingDef>,
}

impl OutgoingTable {
    pub fn open(data_dir: &Path, shards: usize) -> Result<OutgoingTable, OutgoingError> {
        let path = data_dir.join(OUTGOING_FILE);
        let file: TableFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| OutgoingError::Io(format!("{} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TableFile::default(),
            Err(e) => return Err(OutgoingError::Io(e.to_string())),
        };
        let by_key = file
            .queues
            .into_iter()
            .map(|mut q| {
                // A queue keeps its partition; with fewer shards now, the shard that owns
                // the partition index modulo the count sends it.
                q.shard %= shards.max(1);
                (q.key.clone(), q)
            })
            .collect();
        Ok(OutgoingTable {
            path,
            shards: shards.max(1),
            by_key,
        })
    }

    /// The outgoing queue of a destination, created (and saved) on first use.
    pub fn get_or_create(&mut self, d: &DirectName) -> Result<OutgoingDef, OutgoingError> {
        let (key, host, transport) = destination_of(d);
        let port = match &d.address {
            DirectAddress::Http { port, .. } | DirectAddress::Https { port, .. } => *port,
            _ => None,
        };
        if let Some(q) = self.by_key.get(&key) {
            return Ok(q.clone());
        }
        if self.by_key.len() >= OUTGOING_QUEUES_MAX {
            return Err(OutgoingError::Full(OUTGOING_QUEUES_MAX));
        }
        let n = self.by_key.len() as u32;
        let q = OutgoingDef {
            id: OUTGOING_ID_BASE + n,
            key: key.clone(),
            host,
            transport,
            shard: (n as usize) % self.shards,
            tx_sequence_id: 0,
            paused: false,
            port,
        };
        self.by_key.insert(key, q.clone());
        self.save()?;
        Ok(q)
    }

    /// Records (durably) the transactional sequence id now used for outgoing queue `id`.
    pub fn set_tx_sequence_id(&mut self, id: u32, seq_id: u64) -> Result<(), OutgoingError> {
        let Some(q) = self.by_key.values_mut().find(|q| q.id == id) else {
            return Ok(());
        };
        if q.tx_sequence_id >= seq_id {
            return Ok(());
        }
        q.tx_sequence_id = seq_id;
        self.save()
    }

    /// Pauses or resumes the outgoing queue whose key is `key` (`TCP:10.0.0.7`, `OS:winbox`,
    /// any case); saved at once.
    pub fn set_paused(
        &mut self,
        key: &str,
        paused: bool,
    ) -> Option<Result<OutgoingDef, OutgoingError>> {
        let key = match key.split_once(':') {
            Some((proto, host)) => format!(
                "{}:{}",
                proto.to_ascii_uppercase(),
                host.to_ascii_lowercase()
            ),
            None => key.to_string(),
        };
        let q = self.by_key.get_mut(&key)?;
        q.paused = paused;
        let def = q.clone();
        Some(self.save().map(|()| def))
    }

    fn save(&self) -> Result<(), OutgoingError> {
        let file = TableFile {
            queues: self.by_key.values().cloned().collect(),
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| OutgoingError::Io(e.to_string()))?;
        write_atomic(&self.path, &bytes).map_err(|e| OutgoingError::Io(e.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &OutgoingDef> {
        self.by_key.values()
    }

    pub fn by_id(&self, id: u32) -> Option<&OutgoingDef> {
        self.by_key.values().find(|q| q.id == id)
    }

    /// The table as it is now, for lookups.
    pub fn snapshot(&self) -> OutgoingSnapshot {
        let defs: Vec<OutgoingDef> = self.by_key.values().cloned().collect();
        OutgoingSnapshot {
            by_id: defs.iter().enumerate().map(|(i, d)| (d.id, i)).collect(),
            by_key: defs
                .iter()
                .enumerate()
                .map(|(i, d)| (d.key.clone(), i))
                .collect(),
            defs,
        }
    }
}

/// The outgoing table as last published: what lookups read (by id, by destination key, all).
#[derive(Debug, Default)]
pub struct OutgoingSnapshot {
    /// In key order.
    defs: Vec<OutgoingDef>,
    by_id: HashMap<u32, usize>,
    by_key: HashMap<String, usize>,
}

impl OutgoingSnapshot {
    pub fn iter(&self) -> impl Iterator<Item = &OutgoingDef> {
        self.defs.iter()
    }

    pub fn by_id(&self, id: u32) -> Option<&OutgoingDef> {
        self.by_id.get(&id).map(|&i| &self.defs[i])
    }

    /// The outgoing queue of destination key `key` (`TCP:192.0.2.10`: [`destination_of`]).
    pub fn by_key(&self, key: &str) -> Option<&OutgoingDef> {
        self.by_key.get(key).map(|&i| &self.defs[i])
    }
}

std::thread_local! {
    /// This thread's copies of published snapshots: (table instance, generation, snapshot).
    static SNAPSHOTS: RefCell<Vec<(u64, u64, Arc<OutgoingSnapshot>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Numbers [`SharedOutgoing`] instances (the key of a thread's copies).
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The outgoing table shared by the shards and the API's threads. Lookups ([`Self::read`],
/// on the path of every outgoing message and OrderAck) take no lock: each thread keeps a copy
/// of the last published snapshot and checks it against a generation counter (one atomic
/// load); after a change, its next lookup loads the published `Arc` (arc-swap, no lock).
/// Changes (a new destination's first message, pause and resume, a new transactional sequence
/// id: all rare) serialise on `table`, the writers' lock no lookup takes, held across the write
/// of outgoing.json, then publish a new snapshot.
#[derive(Debug)]
pub struct SharedOutgoing {
    instance: u64,
    generation: AtomicU64,
    published: arc_swap::ArcSwap<OutgoingSnapshot>,
    table: Mutex<OutgoingTable>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedOutgoing {
    pub fn new(table: OutgoingTable) -> SharedOutgoing {
        SharedOutgoing {
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(1),
            published: arc_swap::ArcSwap::from_pointee(table.snapshot()),
            table: Mutex::new(table),
        }
    }

    /// Runs `f` on the current snapshot, without a lock unless the table changed since this
    /// thread last looked.
    pub fn read<R>(&self, f: impl FnOnce(&OutgoingSnapshot) -> R) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        SNAPSHOTS.with(|cell| {
            if let Ok(copies) = cell.try_borrow() {
                if let Some((_, _, snap)) = copies
                    .iter()
                    .find(|(i, g, _)| *i == self.instance && *g == generation)
                {
                    return f(snap);
                }
            }
            // Changed since (or first look). A writer publishes the snapshot before it bumps
            // the generation: a snapshot loaded after reading `generation` is at least that
            // generation's (a newer one tagged older is only refreshed once more).
            let snap = self.published.load_full();
            // (Not kept when a lookup runs inside another one's `f`.)
            if let Ok(mut copies) = cell.try_borrow_mut() {
                copies.retain(|(i, _, _)| *i != self.instance);
                if copies.len() >= OUTGOING_SNAPSHOTS_PER_THREAD_MAX {
                    copies.remove(0);
                }
                copies.push((self.instance, generation, snap.clone()));
            }
            f(&snap)
        })
    }

    /// Outgoing queue `id`, as last published.
    pub fn by_id(&self, id: u32) -> Option<OutgoingDef> {
        self.read(|s| s.by_id(id).cloned())
    }

    /// Every outgoing queue, as last published.
    pub fn all(&self) -> Vec<OutgoingDef> {
        self.read(|s| s.iter().cloned().collect())
    }

    /// The outgoing queue of a destination: looked up without a lock; created (saved,
    /// published) on first use, under the writers' lock.
    pub fn get_or_create(&self, d: &DirectName) -> Result<OutgoingDef, OutgoingError> {
        let (key, _, _) = destination_of(d);
        if let Some(def) = self.read(|s| s.by_key(&key).cloned()) {
            return Ok(def);
        }
        self.change(|t| t.get_or_create(d))
    }

    /// [`OutgoingTable::set_paused`], published.
    pub fn set_paused(
        &self,
        key: &str,
        paused: bool,
    ) -> Option<Result<OutgoingDef, OutgoingError>> {
        self.change(|t| t.set_paused(key, paused))
    }

    /// [`OutgoingTable::set_tx_sequence_id`], published.
    pub fn set_tx_sequence_id(&self, id: u32, seq_id: u64) -> Result<(), OutgoingError> {
        self.change(|t| t.set_tx_sequence_id(id, seq_id))
    }

    /// A change under the writers' lock, then the new snapshot published.
    fn change<R>(&self, f: impl FnOnce(&mut OutgoingTable) -> R) -> R {
        let mut t = lock(&self.table);
        let r = f(&mut t);
        self.published.store(Arc::new(t.snapshot()));
        self.generation.fetch_add(1, Ordering::Release);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::format_name::FormatName;

    #[test]
    fn one_queue_per_machine_persisted_with_a_stable_id() {
        let d = tempfile::tempdir().unwrap();
        let mut t = OutgoingTable::open(d.path(), 2).unwrap();
        let a = FormatName::parse("DIRECT=OS:WinBox\\private$\\a").unwrap();
        let b = FormatName::parse("DIRECT=OS:winbox\\private$\\b").unwrap();
        let c = FormatName::parse("DIRECT=TCP:192.0.2.10\\private$\\a").unwrap();
        let qa = t.get_or_create(a.as_direct().unwrap()).unwrap();
        let qb = t.get_or_create(b.as_direct().unwrap()).unwrap();
        let qc = t.get_or_create(c.as_direct().unwrap()).unwrap();
        assert_eq!(qa, qb, "same machine, same outgoing queue");
        assert_eq!(qa.key, "OS:winbox");
        assert_ne!(qa.id, qc.id);
        assert_ne!(qa.shard, qc.shard, "spread over shards");
        drop(t);
        let mut t = OutgoingTable::open(d.path(), 2).unwrap();
        assert_eq!(t.get_or_create(c.as_direct().unwrap()).unwrap(), qc);
        let h = FormatName::parse("DIRECT=HTTP://web/msmq/private$/q").unwrap();
        assert_eq!(
            t.get_or_create(h.as_direct().unwrap()).unwrap().transport,
            Transport::Http
        );
    }

    /// A lookup sees every change published, on its own thread and on another, and a
    /// snapshot taken before a change stays as it was.
    #[test]
    fn lookups_see_each_published_change() {
        let d = tempfile::tempdir().unwrap();
        let shared = Arc::new(SharedOutgoing::new(
            OutgoingTable::open(d.path(), 2).unwrap(),
        ));
        assert!(shared.all().is_empty());
        let a = FormatName::parse("DIRECT=TCP:192.0.2.10\\private$\\a").unwrap();
        let qa = shared.get_or_create(a.as_direct().unwrap()).unwrap();
        assert_eq!(shared.by_id(qa.id), Some(qa.clone()));
        let other = shared.clone();
        let id = qa.id;
        assert_eq!(
            std::thread::spawn(move || other.by_id(id)).join().unwrap(),
            Some(qa.clone())
        );
        assert!(!shared.by_id(qa.id).unwrap().paused);
        shared.set_paused("tcp:192.0.2.10", true).unwrap().unwrap();
        assert!(
            shared.by_id(qa.id).unwrap().paused,
            "seen at once by the writer's thread"
        );
        let other = shared.clone();
        assert!(std::thread::spawn(move || other.by_id(id).unwrap().paused)
            .join()
            .unwrap());
        // A lookup inside another lookup (no copy kept) still sees the table.
        assert_eq!(
            shared.read(|s| shared.by_id(s.iter().next().unwrap().id)),
            Some(shared.by_id(id).unwrap())
        );
        // Kept in outgoing.json.
        let t = OutgoingTable::open(d.path(), 2).unwrap();
        assert!(t.by_id(id).unwrap().paused);
    }
}
