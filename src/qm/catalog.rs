//! The queue catalog: which private queues exist, their private queue numbers, whether they are
//! transactional, their quotas; persisted in the data directory (`queues.json`, written
//! atomically) so a restart finds the same queues. System queues (dead-letter, transactional
//! dead-letter, journal, `order_queue$`) always exist. Each queue carries its rights and its
//! Authenticate setting ([`QueueSecurity`], see `qm::rights`).
//!
//! Queue names are case-insensitive, as in MSMQ: the catalog keys them in lower case and keeps
//! the spelling they were created with for display.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LockResult, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::identity::write_atomic;
use super::rights::QueueSecurity;

/// File of the catalog in the data directory.
pub const CATALOG_FILE: &str = "queues.json";
/// The first private queue number given to an application queue. Lower numbers are left to
/// system queues: the specs document only 4 = `order_queue$` (MS-MQQB 2.2.4).
pub const FIRST_USER_QUEUE_ID: u32 = 0x10;
/// Private queue number of `order_queue$`, where OrderAcks and FinalAcks arrive.
pub const ORDER_QUEUE_ID: u32 = 4;
/// Store queue ids of the machine queues (outside the private-number range used in practice).
pub const DEADLETTER_ID: u32 = 0xFFFF_FF01;
pub const DEADXACT_ID: u32 = 0xFFFF_FF02;
pub const JOURNAL_ID: u32 = 0xFFFF_FF03;
/// Longest queue name (MS-MQMQ 2.1.1: 1-124 characters).
pub const QUEUE_NAME_LEN_MAX: usize = 124;
/// `QueueDef.partition` of an entry written before queues had an owning partition; replaced
/// once by [`Catalog::assign_partitions`].
pub const PARTITION_UNASSIGNED: u32 = u32::MAX;

fn partition_unassigned() -> u32 {
    PARTITION_UNASSIGNED
}

/// What kind of queue an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Private,
    /// `SYSTEM$;DEADLETTER`: non-transactional messages that could not be delivered.
    DeadLetter,
    /// `SYSTEM$;DEADXACT`: transactional messages that could not be delivered.
    DeadXact,
    /// `SYSTEM$;JOURNAL`: the machine journal.
    Journal,
    /// `private$\order_queue$`: transactional acknowledgements for our own sends.
    OrderQueue,
}

/// One queue's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Store queue id; for private queues also the private queue number on the wire.
    pub id: u32,
    pub name: String,
    pub kind: QueueKind,
    pub transactional: bool,
    /// Byte quota (MSMQ `Quota`), `None` for unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Keep a copy of every received message in this queue's journal, `NAME;journal`
    /// (`lior queue journal NAME on|off`; see `qm::broker::journal`).
    #[serde(default)]
    pub journal: bool,
    /// Who could send, in catalogs written before queue rights existed (SIDs or "Everyone";
    /// empty meant everyone). Read only: [`Catalog::open`] turns it into send grants in
    /// `security` and saves the catalog without it.
    #[serde(default, skip_serializing)]
    pub write_access: Vec<String>,
    /// The queue's rights and Authenticate setting; `None` only for a system queue never
    /// changed (it has the defaults; see [`QueueDef::security`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<QueueSecurity>,
    /// The store partition that owns the queue: every message of the queue is stored there,
    /// so the queue is delivered in one order (priority, then FIFO). Assigned at creation
    /// (the partition with the fewest queues) and never changed, since the data lives there.
    #[serde(default = "partition_unassigned")]
    pub partition: u32,
}

impl QueueDef {
    /// The queue's rights and Authenticate setting (the defaults when none were set).
    pub fn security(&self) -> std::borrow::Cow<'_, QueueSecurity> {
        match &self.security {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(QueueSecurity::windows_default()),
        }
    }
}

/// Why a catalog change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogError {
    BadName(String),
    Exists(String),
    NotFound(String),
    Full(usize),
    SystemQueue(String),
    Io(String),
    /// A change of a queue's rights that cannot be made (a full access list).
    Rights(String),
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogError::BadName(why) => write!(f, "invalid queue name: {why}"),
            CatalogError::Exists(n) => write!(f, "queue {n} already exists"),
            CatalogError::NotFound(n) => write!(f, "no queue named {n}"),
            CatalogError::Full(max) => write!(f, "the queue table is full ({max} queues)"),
            CatalogError::SystemQueue(n) => write!(f, "{n} is a system queue"),
            CatalogError::Io(e) => write!(f, "cannot save the queue catalog: {e}"),
            CatalogError::Rights(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CatalogError {}

/// The set of queues.
#[derive(Clone, Debug)]
pub struct Catalog {
    path: PathBuf,
    queues_max: usize,
    /// By lower-cased name.
    by_name: BTreeMap<String, QueueDef>,
    next_id: u32,
    /// Store partitions a new queue may be given (see [`Catalog::assign_partitions`]).
    partitions: u32,
}

/// The catalog as every thread shares it (branch `stall`): readers take an immutable snapshot
/// ([`CatalogCell::load`]: one atomic load and a reference count, no lock, so a route-cache miss
/// on a shard never waits for the API); a change is made on a copy under a writer lock that
/// readers never take ([`CatalogCell::write`]), and published whole when its guard drops.
/// Writers are serialised by that lock, so no change is lost; readers see either the snapshot
/// before a change or the one after, never a half-made one.
pub struct CatalogCell {
    current: ArcSwap<Catalog>,
    /// Serialises writers (create, delete, rights, journal flag); readers never take it.
    writer: Mutex<()>,
    /// Moved after each publication (see [`CatalogWrite`]); shared with the broker's
    /// `catalog_generation`, the key of the shards' route caches.
    generation: Arc<AtomicU64>,
}

impl CatalogCell {
    /// A cell holding `catalog`; `generation` moves after each published change.
    pub fn new(catalog: Catalog, generation: Arc<AtomicU64>) -> CatalogCell {
        CatalogCell {
            current: ArcSwap::from_pointee(catalog),
            writer: Mutex::new(()),
            generation,
        }
    }

    /// The current snapshot, without a lock. It does not change under the caller: a change
    /// published meanwhile is seen by the next `load`.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Starts a change: waits for any other writer (never for a reader), then hands out a copy
    /// of the current catalog to change; the guard publishes it when dropped. Err (poisoned:
    /// a writer panicked) still carries the guard, as `RwLock::write` does.
    pub fn write(&self) -> LockResult<CatalogWrite<'_>> {
        let (lock, poisoned) = match self.writer.lock() {
            Ok(g) => (g, false),
            Err(p) => (p.into_inner(), true),
        };
        let draft = Catalog::clone(&self.current.load());
        let w = CatalogWrite {
            cell: self,
            _writer: lock,
            draft: Some(draft),
        };
        if poisoned {
            Err(PoisonError::new(w))
        } else {
            Ok(w)
        }
    }
}

impl std::fmt::Debug for CatalogCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCell")
            .field("queues", &self.current.load().by_name.len())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

/// A change of the catalog in progress ([`CatalogCell::write`]): a private copy, published when
/// the guard drops. The generation moves after the publication, so a route cache keyed by a
/// generation it read before the new snapshot was visible is dropped (a writer that also moves
/// the generation itself while holding the guard only adds a step).
pub struct CatalogWrite<'a> {
    cell: &'a CatalogCell,
    _writer: MutexGuard<'a, ()>,
    /// Taken only by `drop`.
    draft: Option<Catalog>,
}

impl Deref for CatalogWrite<'_> {
    type Target = Catalog;

    fn deref(&self) -> &Catalog {
        // Some until `drop`.
        self.draft
            .as_ref()
            .expect("a catalog draft until the guard drops")
    }
}

impl DerefMut for CatalogWrite<'_> {
    fn deref_mut(&mut self) -> &mut Catalog {
        self.draft
            .as_mut()
            .expect("a catalog draft until the guard drops")
    }
}

impl Drop for CatalogWrite<'_> {
    fn drop(&mut self) {
        if let Some(draft) = self.draft.take() {
            // What the writer left is what readers see, as it was with the lock (a change that
            // failed to save stays in memory, as before).
            self.cell.current.store(Arc::new(draft));
            self.cell.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    next_id: u32,
    queues: Vec<QueueDef>,
}

/// Names a private queue may not take: the machine queues `lookup` answers to by these names
/// (a private queue so named would be shadowed, never readable nor deletable), and the private
/// system queues Windows keeps.
pub const RESERVED_QUEUE_NAMES: &[&str] = &[
    "deadletter",
    "deadletter$",
    "deadxact",
    "xactdeadletter",
    "journal",
    "journal$",
    "order_queue$",
    "admin_queue$",
    "notify_queue$",
    "mqis_queue$",
];

/// Whether `c` may appear in a queue name (MS-MQMQ 2.1.1, MSMQ 2.0-6.0):
/// `QueueName = 1*124(%x21 / %x23-2A / %x2D-3A / %x3C-5B / %x5D-7F)`, i.e. visible ASCII but
/// `"` `+` `,` `;` `\`; lior also refuses `/` (MSMQ over HTTP reads it as the path separator:
/// `DIRECT=HTTP://host/msmq/private$/q`) and DEL (a control character).
fn name_char_allowed(c: char) -> bool {
    matches!(c, '\x21'..='\x7e') && !matches!(c, '"' | '+' | ',' | ';' | '\\' | '/')
}

/// Checks a private queue name against MS-MQMQ 2.1.1: 1-124 characters from the grammar's set
/// (see [`name_char_allowed`]), not a reserved name (see [`RESERVED_QUEUE_NAMES`]), not `.` or
/// `..` (an HTTP path cannot carry them). A `private$\` prefix is accepted and removed. The
/// error names the character or the name refused.
pub fn normalize_name(name: &str) -> Result<String, CatalogError> {
    let lower = name.to_ascii_lowercase();
    let bare = if lower.starts_with("private$\\") || lower.starts_with("private$/") {
        &name["private$\\".len()..]
    } else {
        name
    };
    let n = bare.chars().count();
    if n == 0 || n > QUEUE_NAME_LEN_MAX {
        return Err(CatalogError::BadName(format!(
            "{bare:?} has {n} characters; 1 to {QUEUE_NAME_LEN_MAX} are allowed"
        )));
    }
    if let Some(c) = bare.chars().find(|&c| !name_char_allowed(c)) {
        let what = match c {
            ' ' => "a space".to_string(),
            c if c.is_control() => format!("the control character {c:?}"),
            c if !c.is_ascii() => format!("the non-ASCII character {c:?}"),
            c => format!("{c:?}"),
        };
        return Err(CatalogError::BadName(format!(
            "{bare:?} contains {what}; a queue name holds visible ASCII characters except \
             \" + , ; \\ / (MS-MQMQ 2.1.1)"
        )));
    }
    if bare == "." || bare == ".." {
        return Err(CatalogError::BadName(format!(
            "{bare:?} cannot be a queue name: a URL path (SRMP, the API) cannot carry it"
        )));
    }
    let lower_bare = bare.to_ascii_lowercase();
    if RESERVED_QUEUE_NAMES.contains(&lower_bare.as_str()) || lower_bare.starts_with("system$") {
        return Err(CatalogError::BadName(format!(
            "{bare:?} is reserved for a system queue; choose another name"
        )));
    }
    Ok(bare.to_string())
}

fn system_queues() -> Vec<QueueDef> {
    let def = |id, name: &str, kind, transactional| QueueDef {
        id,
        name: name.to_string(),
        kind,
        transactional,
        quota_bytes: None,
        journal: false,
        write_access: Vec::new(),
        security: None,
        partition: PARTITION_UNASSIGNED,
    };
    vec![
        def(ORDER_QUEUE_ID, "order_queue$", QueueKind::OrderQueue, false),
        def(
            DEADLETTER_ID,
            "system$;deadletter",
            QueueKind::DeadLetter,
            false,
        ),
        def(DEADXACT_ID, "system$;deadxact", QueueKind::DeadXact, true),
        def(JOURNAL_ID, "system$;journal", QueueKind::Journal, false),
    ]
}

impl Catalog {
    /// Opens (or creates) the catalog of `data_dir`.
    pub fn open(data_dir: &Path, queues_max: usize) -> Result<Catalog, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let mut c = Catalog {
            path,
            queues_max,
            by_name: BTreeMap::new(),
            next_id: FIRST_USER_QUEUE_ID,
            partitions: 1,
        };
        match std::fs::read(&c.path) {
            Ok(bytes) => {
                let f: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
                    CatalogError::Io(format!("{} is damaged: {e}", c.path.display()))
                })?;
                c.next_id = f.next_id.max(FIRST_USER_QUEUE_ID);
                let mut migrated = false;
                for mut q in f.queues {
                    // A catalog from before queue rights: `write_access` becomes send grants.
                    if q.security.is_none() && q.kind == QueueKind::Private {
                        q.security = Some(
                            QueueSecurity::from_write_access(&q.write_access).map_err(|e| {
                                CatalogError::Io(format!(
                                    "{}: queue {}: {e}; correct or remove the entry",
                                    c.path.display(),
                                    q.name
                                ))
                            })?,
                        );
                        q.write_access.clear();
                        migrated = true;
                    }
                    c.by_name.insert(q.name.to_ascii_lowercase(), q);
                }
                if migrated {
                    for q in system_queues() {
                        c.by_name.entry(q.name.clone()).or_insert(q);
                    }
                    c.save()?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CatalogError::Io(e.to_string())),
        }
        for q in system_queues() {
            c.by_name.entry(q.name.clone()).or_insert(q);
        }
        Ok(c)
    }

    fn save(&self) -> Result<(), CatalogError> {
        let f = CatalogFile {
            next_id: self.next_id,
            queues: self.by_name.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&f).map_err(|e| CatalogError::Io(e.to_string()))?;
        write_atomic(&self.path, &bytes).map_err(|e| CatalogError::Io(e.to_string()))
    }

    /// Sets the number of store partitions (`n` >= 1) and gives every queue without an owning
    /// partition one: `id % n` (catalogs written before queues had owners; their messages may
    /// lie in any partition, see `Broker`'s spread queues). A queue whose partition no longer
    /// exists (a data directory whose partition directories were removed) is given `id % n`
    /// too. Saves the catalog when anything changed; returns whether it did.
    pub fn assign_partitions(&mut self, n: u32) -> Result<bool, CatalogError> {
        let n = n.max(1);
        self.partitions = n;
        let mut changed = false;
        for q in self.by_name.values_mut() {
            if q.partition >= n {
                if q.partition != PARTITION_UNASSIGNED {
                    tracing::warn!(queue = %q.name, partition = q.partition, partitions = n, "the queue's partition does not exist; giving it another");
                }
                q.partition = q.id % n;
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    /// The partition with the fewest queues (ties: the lowest).
    fn least_loaded_partition(&self) -> u32 {
        let mut load = vec![0usize; self.partitions as usize];
        for q in self.by_name.values() {
            if let Some(l) = load.get_mut(q.partition as usize) {
                *l += 1;
            }
        }
        load.iter()
            .enumerate()
            .min_by_key(|&(i, l)| (*l, i))
            .map_or(0, |(i, _)| i as u32)
    }

    /// Creates a private queue; returns its definition.
    pub fn create(&mut self, name: &str, transactional: bool) -> Result<QueueDef, CatalogError> {
        let name = normalize_name(name)?;
        let key = name.to_ascii_lowercase();
        if self.by_name.contains_key(&key) {
            return Err(CatalogError::Exists(name));
        }
        let user_queues = self
            .by_name
            .values()
            .filter(|q| q.kind == QueueKind::Private)
            .count();
        if user_queues >= self.queues_max {
            return Err(CatalogError::Full(self.queues_max));
        }
        let q = QueueDef {
            id: self.next_id,
            name,
            kind: QueueKind::Private,
            transactional,
            quota_bytes: None,
            journal: false,
            write_access: Vec::new(),
            security: Some(QueueSecurity::windows_default()),
            partition: self.least_loaded_partition(),
        };
        self.next_id += 1;
        self.by_name.insert(key, q.clone());
        self.save()?;
        Ok(q)
    }

    /// Deletes a private queue; returns its definition so its messages can be removed.
    pub fn delete(&mut self, name: &str) -> Result<QueueDef, CatalogError> {
        let key = match self.lookup(name) {
            None => return Err(CatalogError::NotFound(name.to_string())),
            Some(q) if q.kind != QueueKind::Private => {
                return Err(CatalogError::SystemQueue(q.name.clone()))
            }
            Some(q) => q.name.to_ascii_lowercase(),
        };
        let Some(q) = self.by_name.remove(&key) else {
            return Err(CatalogError::NotFound(name.to_string()));
        };
        self.save()?;
        Ok(q)
    }

    /// Finds a queue by name: a private queue name (with or without `private$\`), or a machine
    /// queue (`system$;deadletter`, `deadletter`, `deadxact`, `journal`, `order_queue$`).
    ///
    /// With an explicit `private$\` prefix the name is a private queue's only: a private queue
    /// named like a machine queue, created before such names were refused, stays reachable
    /// (and deletable) as `private$\deadletter`.
    pub fn lookup(&self, name: &str) -> Option<&QueueDef> {
        let lower = name.to_ascii_lowercase();
        let private = lower
            .strip_prefix("private$\\")
            .or_else(|| lower.strip_prefix("private$/"));
        if let Some(p) = private {
            if let Some(q) = self.by_name.get(p).filter(|q| q.kind == QueueKind::Private) {
                return Some(q);
            }
        }
        let lower = private.unwrap_or(&lower);
        let key = match lower {
            "deadletter" | "deadletter$" => "system$;deadletter",
            "deadxact" | "xactdeadletter" => "system$;deadxact",
            "journal" | "journal$" => "system$;journal",
            other => other,
        };
        self.by_name.get(key)
    }

    /// Turns queue `name`'s journal on or off and saves the catalog; returns the queue as it
    /// is now. System queues keep no journal.
    pub fn set_journal(&mut self, name: &str, on: bool) -> Result<QueueDef, CatalogError> {
        let key = match self.lookup(name) {
            Some(q)
                if q.id >= FIRST_USER_QUEUE_ID && q.id < crate::qm::broker::JOURNAL_QUEUE_BIT =>
            {
                self.by_name
                    .iter()
                    .find(|(_, d)| d.id == q.id)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| CatalogError::NotFound(name.to_string()))?
            }
            Some(q) => {
                return Err(CatalogError::Rights(format!(
                    "{}: a system queue keeps no journal",
                    q.name
                )))
            }
            None => return Err(CatalogError::NotFound(name.to_string())),
        };
        let q = self
            .by_name
            .get_mut(&key)
            .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
        let before = q.journal;
        q.journal = on;
        let after = q.clone();
        if let Err(e) = self.save() {
            if let Some(q) = self.by_name.get_mut(&key) {
                q.journal = before;
            }
            return Err(e);
        }
        Ok(after)
    }

    /// Changes queue `name`'s security with `change` (which may refuse, e.g. a full access
    /// list) and saves the catalog; returns the queue as it is now. Nothing changes when
    /// `change` fails or the catalog cannot be saved.
    pub fn update_security(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut QueueSecurity) -> Result<(), String>,
    ) -> Result<QueueDef, CatalogError> {
        let key = match self.lookup(name) {
            None => return Err(CatalogError::NotFound(name.to_string())),
            Some(q) => self
                .by_name
                .iter()
                .find(|(_, d)| d.id == q.id)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?,
        };
        let q = self
            .by_name
            .get_mut(&key)
            .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
        let before = q.security.clone();
        let mut s = q.security().into_owned();
        change(&mut s).map_err(CatalogError::Rights)?;
        q.security = Some(s);
        let after = q.clone();
        if let Err(e) = self.save() {
            if let Some(q) = self.by_name.get_mut(&key) {
                q.security = before;
            }
            return Err(e);
        }
        Ok(after)
    }

    pub fn by_id(&self, id: u32) -> Option<&QueueDef> {
        self.by_name.values().find(|q| q.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &QueueDef> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader never waits for a writer: while a change is being made (the writer's guard
    /// held), another thread loads the catalog at once and sees it as it was; once the guard
    /// drops, the change is there and the generation has moved. (Under the former
    /// `RwLock<Catalog>` the reader waits for the writer's guard, which this test holds until
    /// after its 30 s wait: it would fail.)
    #[test]
    fn a_reader_does_not_wait_for_a_writer_and_sees_the_change_once_published() {
        let d = tempfile::tempdir().unwrap();
        let generation = Arc::new(AtomicU64::new(1));
        let cell = Arc::new(CatalogCell::new(
            Catalog::open(d.path(), 100).unwrap(),
            generation.clone(),
        ));
        let before = cell.load();
        let mut w = cell.write().unwrap();
        w.create("orders", false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                let _ = tx.send(cell.load().lookup("orders").is_some());
            })
        };
        // Generous: a reader that is not blocked answers in microseconds; one blocked by the
        // writer (which holds its guard until after this) never answers.
        let seen = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(seen, Ok(false), "the reader waited for the writer");
        reader.join().unwrap();
        assert_eq!(generation.load(Ordering::SeqCst), 1);
        drop(w);
        assert!(cell.load().lookup("orders").is_some());
        assert!(generation.load(Ordering::SeqCst) > 1);
        // A snapshot taken before stays as it was.
        assert!(before.lookup("orders").is_none());
        // Writers are serialised: two threads creating queues both land.
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|n| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let mut w = cell.write().unwrap();
                        w.create(&format!("{n}{i}"), false).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let now = cell.load();
        assert_eq!(
            now.iter().filter(|q| q.kind == QueueKind::Private).count(),
            41
        );
        // And saved: a reopen finds them all.
        let reopened = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(
            reopened
                .iter()
                .filter(|q| q.kind == QueueKind::Private)
                .count(),
            41
        );
    }

    #[test]
    fn queues_persist_with_stable_numbers_and_system_queues_exist() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(d.path(), 100).unwrap();
        let orders = c.create("Orders", false).unwrap();
        let tx = c.create("private$\\TxQ", true).unwrap();
        assert_eq!(
            (orders.id, tx.id),
            (FIRST_USER_QUEUE_ID, FIRST_USER_QUEUE_ID + 1)
        );
        assert_eq!(
            c.create("orders", true),
            Err(CatalogError::Exists("orders".into()))
        );
        drop(c);
        let mut c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("ORDERS").unwrap().name, "Orders");
        assert!(c.lookup("private$\\txq").unwrap().transactional);
        assert_eq!(c.lookup("order_queue$").unwrap().id, ORDER_QUEUE_ID);
        assert_eq!(c.lookup("deadletter").unwrap().kind, QueueKind::DeadLetter);
        c.delete("orders").unwrap();
        // Numbers are never reused: a message for the old queue must not reach a new one.
        assert_eq!(
            c.create("orders", false).unwrap().id,
            FIRST_USER_QUEUE_ID + 2
        );
        assert!(matches!(
            c.delete("deadletter"),
            Err(CatalogError::SystemQueue(_))
        ));
    }

    #[test]
    fn names_are_checked_against_the_spec_limits() {
        assert!(normalize_name("").is_err());
        assert!(normalize_name(&"x".repeat(125)).is_err());
        assert!(normalize_name(&"x".repeat(124)).is_ok());
        for bad in ["a;b", "a,b", "a+b", "a\"b", "a\\b", "a\u{1}b"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_path_name_grammar_and_reserved_names_are_refused() {
        for good in [
            "orders",
            "bench",
            "Orders-2026.v1",
            "a$",
            "x!#%&'()*-.:<=>?@[]^_`{|}~",
            "private$\\tx",
        ] {
            assert!(normalize_name(good).is_ok(), "{good:?}");
        }
        let refused = |n: &str| match normalize_name(n) {
            Err(CatalogError::BadName(why)) => why,
            other => panic!("{n:?} accepted: {other:?}"),
        };
        assert!(refused("a b").contains("a space"));
        assert!(refused("a/b").contains("'/'"));
        assert!(refused("caf\u{e9}").contains("non-ASCII"));
        assert!(refused("a\u{7f}").contains("control"));
        assert!(refused("..").contains("URL"));
        for reserved in [
            "deadletter",
            "Journal",
            "DEADXACT",
            "order_queue$",
            "private$\\journal",
        ] {
            assert!(refused(reserved).contains("reserved"), "{reserved}");
        }
    }

    #[test]
    fn a_private_queue_named_like_a_machine_queue_from_an_older_catalog_stays_reachable() {
        let d = tempfile::tempdir().unwrap();
        // A catalog written before such names were refused.
        let old = CatalogFile {
            next_id: FIRST_USER_QUEUE_ID + 1,
            queues: vec![QueueDef {
                id: FIRST_USER_QUEUE_ID,
                name: "deadletter".into(),
                kind: QueueKind::Private,
                transactional: false,
                quota_bytes: None,
                journal: false,
                write_access: Vec::new(),
                security: None,
                partition: PARTITION_UNASSIGNED,
            }],
        };
        std::fs::write(
            d.path().join(CATALOG_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let mut c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("deadletter").unwrap().kind, QueueKind::DeadLetter);
        assert_eq!(
            c.lookup("private$\\deadletter").unwrap().id,
            FIRST_USER_QUEUE_ID
        );
        assert_eq!(
            c.delete("private$\\deadletter").unwrap().id,
            FIRST_USER_QUEUE_ID
        );
        assert_eq!(c.lookup("deadletter").unwrap().kind, QueueKind::DeadLetter);
    }

    #[test]
    fn the_table_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(d.path(), 2).unwrap();
        c.create("a", false).unwrap();
        c.create("b", false).unwrap();
        assert_eq!(c.create("c", false), Err(CatalogError::Full(2)));
    }

    #[test]
    fn a_queue_keeps_its_partition_across_a_reopen_with_more_partitions() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(d.path(), 100).unwrap();
        c.assign_partitions(2).unwrap();
        let placed: Vec<(String, u32)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (n.to_string(), c.create(n, false).unwrap().partition))
            .collect();
        // Least loaded first: the four system queues are split 2/2, so the new ones alternate.
        assert_eq!(
            placed.iter().map(|p| p.1).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        drop(c);
        // More cores: more partitions; every queue stays where its messages are.
        let mut c = Catalog::open(d.path(), 100).unwrap();
        assert!(!c.assign_partitions(4).unwrap(), "nothing to assign");
        for (n, p) in &placed {
            assert_eq!(c.lookup(n).unwrap().partition, *p, "{n}");
        }
        // A new queue goes to an empty partition.
        assert_eq!(c.create("f", false).unwrap().partition, 2);
        drop(c);
        let c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("f").unwrap().partition, 2);
        assert_eq!(c.lookup("a").unwrap().partition, placed[0].1);
    }

    #[test]
    fn write_access_of_an_older_catalog_becomes_send_grants_saved_once() {
        use crate::qm::rights::{Principal, Rights};
        let d = tempfile::tempdir().unwrap();
        let old = r#"{"next_id": 19, "queues": [
            {"id": 16, "name": "only-alice", "kind": "private", "transactional": false,
             "write_access": ["S-1-5-21-1-2-3-1001"]},
            {"id": 17, "name": "anyone", "kind": "private", "transactional": false},
            {"id": 18, "name": "world", "kind": "private", "transactional": false,
             "write_access": ["Everyone"]}]}"#;
        std::fs::write(d.path().join(CATALOG_FILE), old).unwrap();
        let c = Catalog::open(d.path(), 100).unwrap();
        let alice = Principal::parse("S-1-5-21-1-2-3-1001").unwrap();
        let sec = c.lookup("only-alice").unwrap().security();
        assert_eq!(sec.rights_of(&[alice]), Rights::WRITE_MESSAGE);
        assert!(!sec
            .rights_of(&[Principal::Everyone, Principal::Anonymous])
            .contains(Rights::WRITE_MESSAGE));
        assert_eq!(
            *c.lookup("anyone").unwrap().security(),
            QueueSecurity::windows_default()
        );
        assert!(c
            .lookup("world")
            .unwrap()
            .security()
            .rights_of(&[Principal::Everyone])
            .contains(Rights::WRITE_MESSAGE));
        // Saved in the new form at once: write_access is gone, the grants are there.
        let text = std::fs::read_to_string(d.path().join(CATALOG_FILE)).unwrap();
        assert!(!text.contains("write_access"), "{text}");
        drop(c);
        let c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("only-alice").unwrap().security().acl.len(), 2);
        // An entry that names no principal stops the open, naming the file, queue and entry.
        let bad = r#"{"next_id": 17, "queues": [{"id": 16, "name": "q", "kind": "private",
            "transactional": false, "write_access": ["DOMAIN\\bob"]}]}"#;
        std::fs::write(d.path().join(CATALOG_FILE), bad).unwrap();
        let e = Catalog::open(d.path(), 100).unwrap_err().to_string();
        assert!(
            e.contains(CATALOG_FILE) && e.contains("queue q") && e.contains("bob"),
            "{e}"
        );
    }

    #[test]
    fn rights_changes_are_saved_and_a_full_list_refuses() {
        use crate::qm::rights::{Principal, Rights, RIGHTS_ENTRIES_MAX};
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(d.path(), 100).unwrap();
        c.create("q", false).unwrap();
        for i in 0..RIGHTS_ENTRIES_MAX - 2 {
            c.update_security("q", |s| {
                s.grant(
                    Principal::Sid(format!("S-1-5-21-{i}")),
                    Rights::WRITE_MESSAGE,
                )
                .map_err(|e| e.to_string())
            })
            .unwrap();
        }
        let e = c
            .update_security("q", |s| {
                s.grant(Principal::User("x".into()), Rights::PEEK_MESSAGE)
                    .map_err(|e| e.to_string())
            })
            .unwrap_err();
        assert!(matches!(&e, CatalogError::Rights(w) if w.contains("RIGHTS_ENTRIES_MAX")));
        c.update_security("deadletter", |s| {
            s.authenticate = true;
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            c.update_security("nosuch", |_| Ok(())),
            Err(CatalogError::NotFound(_))
        ));
        drop(c);
        let c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(
            c.lookup("q").unwrap().security().acl.len(),
            RIGHTS_ENTRIES_MAX
        );
        assert!(c.lookup("deadletter").unwrap().security().authenticate);
    }

    #[test]
    fn an_older_catalog_gets_its_partitions_once_and_saved() {
        let d = tempfile::tempdir().unwrap();
        let old = r#"{"next_id": 18, "queues": [
            {"id": 16, "name": "q16", "kind": "private", "transactional": false},
            {"id": 17, "name": "q17", "kind": "private", "transactional": false}]}"#;
        std::fs::write(d.path().join(CATALOG_FILE), old).unwrap();
        let mut c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("q17").unwrap().partition, PARTITION_UNASSIGNED);
        assert!(c.assign_partitions(2).unwrap());
        assert_eq!(c.lookup("q16").unwrap().partition, 0);
        assert_eq!(c.lookup("q17").unwrap().partition, 1);
        drop(c);
        let mut c = Catalog::open(d.path(), 100).unwrap();
        assert_eq!(c.lookup("q17").unwrap().partition, 1, "saved");
        assert!(!c.assign_partitions(3).unwrap(), "assigned once");
        assert_eq!(c.lookup("q17").unwrap().partition, 1);
    }
}
