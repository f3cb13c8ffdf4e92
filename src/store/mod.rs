//! The durable queue store: segmented append-only logs of queue messages, group commit,
//! consumption by priority/lookup id/message id, space reclamation, quotas and recovery.
//!
//! It stores opaque packet bytes plus the small metadata the queue manager indexes by; it must
//! not make protocol decisions. `unsafe` is confined to the mmap part (`disk.rs`).
//!
//! Layout: one log shared by every queue (so one fdatasync commits appends and removals of all
//! queues and sessions), cut into preallocated segments named `<20-digit first seq>.log`.
//! The generic [`Store`] holds all logic; the IO sits behind [`Disk`], with a real
//! implementation ([`UringDisk`]: io_uring writes, memmap2 reads) and a simulated one
//! ([`sim::SimDisk`]: in memory, tears writes and loses unsynced data on `crash`).

pub mod check;
mod chunked;
mod core;
mod disk;
mod express;
mod index;
pub mod record;
pub mod scan;
pub mod sim;

pub use self::core::Store;
pub use disk::{Chunk, Disk, UringDisk, DISK_TOKEN_BITS};
pub use sim::{SimDisk, SimStore};

use std::fmt;

/// The store on real files.
pub type FileStore = Store<UringDisk>;

/// A queue, as numbered by the queue manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u32);

/// MSMQ's 64-bit LookupId. Assigned by the store: the sequence number of the message's first
/// append, so it increases monotonically per queue (and across the whole store), survives
/// restarts and is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// The 20-byte MSMQ message id: a 16-byte GUID (the source machine) and a u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; 20]);

/// How a message must be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// In memory only; lost on restart.
    Express = 0,
    /// On disk; acknowledged after it is durable.
    Recoverable = 1,
    /// On disk, like recoverable; transactions are the queue manager's business.
    Transactional = 2,
}

impl Class {
    /// Decode the on-disk value.
    pub fn from_u8(v: u8) -> Option<Class> {
        match v {
            0 => Some(Class::Express),
            1 => Some(Class::Recoverable),
            2 => Some(Class::Transactional),
            _ => None,
        }
    }
}

/// Expiry value meaning "never".
pub const EXPIRY_NEVER: u32 = u32::MAX;

/// What the queue manager tells the store about a message besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    /// 0 (lowest) to 7 (highest).
    pub priority: u8,
    /// Express, recoverable or transactional.
    pub class: Class,
    /// The MSMQ message id.
    pub message_id: MessageId,
    /// Absolute time-to-be-received in unix seconds; [`EXPIRY_NEVER`] for never.
    pub expiry_unix_s: u32,
}

/// A position in the store's commit order. Every ticket below
/// [`QueueStore::poll_durable`]'s watermark is durable. Express operations get
/// [`Ticket::IMMEDIATE`], which is always durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

impl Ticket {
    /// The ticket of operations that never touch the disk.
    pub const IMMEDIATE: Ticket = Ticket(0);
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Durable when `ticket < watermark`.
    pub ticket: Ticket,
    /// The message's lookup id.
    pub lookup_id: LookupId,
}

/// Which message a peek or receive means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The next in delivery order: highest priority first, FIFO within a priority.
    Front,
    /// By lookup id.
    Lookup(LookupId),
    /// By message id: the first visible message with that id in delivery order (a scan of the
    /// queue; the queue manager keeps its own index if it needs this often).
    MessageId(MessageId),
}

/// A message, read zero-copy from the log mapping (or the express arena).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The queue it is in.
    pub queue: QueueId,
    /// Its lookup id.
    pub lookup_id: LookupId,
    /// Its metadata.
    pub meta: MessageMeta,
    /// The packet bytes exactly as appended.
    pub bytes: &'a [u8],
}

/// A message taken out of its queue whose removal record is `ticket`. The message may be handed
/// out only once the ticket is durable ([`QueueStore::reserved`] refuses before that); its bytes
/// stay readable until [`QueueStore::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The removal record's ticket.
    pub ticket: Ticket,
    /// The queue it was in.
    pub queue: QueueId,
    /// Its lookup id.
    pub lookup_id: LookupId,
}

/// A position while walking a queue in delivery order; survives removals around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The queue walked.
    pub queue: QueueId,
    /// The last message returned, as (priority, lookup id); `None` before the first.
    pub last: Option<(u8, LookupId)>,
}

impl Cursor {
    /// A cursor before the first message of `queue`.
    pub fn new(queue: QueueId) -> Cursor {
        Cursor { queue, last: None }
    }
}

/// Which quota refused an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// The queue's byte quota (MSMQ's per-queue `Quota`).
    QueueBytes,
    /// The queue's message-count limit.
    QueueMessages,
    /// The machine's byte quota (MSMQ's `MachineQuota`).
    MachineBytes,
    /// The machine's message-count limit (bounds the in-memory index).
    MachineMessages,
}

/// Per-queue limits. `u64::MAX` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueQuota {
    /// Bytes of stored packets.
    pub bytes_max: u64,
    /// Messages.
    pub messages_max: u64,
}

impl QueueQuota {
    /// No per-queue limit (the machine limits still apply).
    pub const UNLIMITED: QueueQuota = QueueQuota {
        bytes_max: u64::MAX,
        messages_max: u64::MAX,
    };
}

/// Errors. Small and `Copy` so the hot path can return them freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// A write or fsync failed earlier (errno); the log refuses all writes until restart.
    Poisoned {
        /// The errno of the failure that poisoned the log.
        errno: i32,
    },
    /// The disk is full: a new segment could not be allocated. Nothing stored is harmed;
    /// consuming messages (reclaiming segments) or freeing disk space makes appends work again.
    DiskFull,
    /// A quota refuses the message; `used` is the current use, `limit` the quota.
    Quota {
        /// Which quota.
        kind: QuotaKind,
        /// How full it is.
        used: u64,
        /// Its limit.
        limit: u64,
    },
    /// No longer returned by `append`/`receive` (a full batch is submitted and a new one
    /// started); kept for callers that still match it.
    BatchFull,
    /// The message exceeds [`StoreConfig::message_bytes_max`].
    TooLarge {
        /// The message's size.
        bytes: u32,
    },
    /// Priority above 7.
    BadPriority,
    /// The queue table is full ([`StoreConfig::queues_max`]).
    TooManyQueues,
    /// The reservation's removal is not durable yet.
    NotDurable,
    /// No such reservation.
    NotFound,
    /// Damage in the log that is not a torn tail (a bad record in data known to be synced):
    /// start-up stops, nothing is changed on disk. `lior store check` shows it, `lior store
    /// salvage` keeps every record that verifies.
    Corrupt {
        /// The segment's first sequence number (its file is `<20 digits>.log`).
        segment: u64,
        /// Byte offset of the first bad record.
        offset: u64,
        /// Valid records found after it (in this segment and later ones).
        records_after: u64,
        /// Bytes of those records.
        bytes_after: u64,
    },
    /// The log was written in another record format (the version byte found): refused rather
    /// than misread.
    Format {
        /// The version byte of the first record.
        found: u8,
    },
    /// Start-up was stopped by a signal (SIGTERM/SIGINT) during recovery; nothing was changed.
    Interrupted,
    /// An operating error from a file system call at open/create/remove time (errno).
    Io {
        /// The errno.
        errno: i32,
    },
    /// io_uring could not be set up; see [`crate::engine::uring::RingError`].
    Ring(crate::engine::uring::RingError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Poisoned { errno } => write!(
                f,
                "store log poisoned by a failed write/fsync ({}); refusing writes until restart",
                std::io::Error::from_raw_os_error(*errno)
            ),
            StoreError::DiskFull => write!(f, "disk full: cannot allocate a new log segment"),
            StoreError::Quota { kind, used, limit } => {
                write!(f, "quota {kind:?} exceeded: {used} used of {limit}")
            }
            StoreError::BatchFull => write!(f, "commit batch full; flush first"),
            StoreError::TooLarge { bytes } => write!(f, "message of {bytes} bytes too large"),
            StoreError::BadPriority => write!(f, "priority must be 0..=7"),
            StoreError::TooManyQueues => write!(f, "queue table full"),
            StoreError::NotDurable => write!(f, "removal not durable yet"),
            StoreError::NotFound => write!(f, "no such message"),
            StoreError::Corrupt {
                segment,
                offset,
                records_after,
                bytes_after,
            } => write!(
                f,
                "log damaged in {} at offset {offset}: a record fails its checks in data that \
                 was already synced (not a torn tail), and {records_after} valid records \
                 ({bytes_after} bytes) follow it; nothing was changed on disk. See it with \
                 `lior store check DATA_DIR`; `lior store salvage DATA_DIR` copies the damaged \
                 segment aside and keeps every record that verifies",
                segment_file_name(*segment)
            ),
            StoreError::Format { found } => write!(
                f,
                "the log was written in record format {found} (before commit markers); this lior \
                 reads format {} only: drain the data directory with the lior that wrote it, or \
                 move it aside",
                record::FORMAT_VERSION
            ),
            StoreError::Interrupted => {
                write!(f, "store recovery stopped by a signal; nothing was changed")
            }
            StoreError::Io { errno } => {
                write!(
                    f,
                    "store io error: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
            StoreError::Ring(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The file name of the segment whose first sequence number is `base`.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Every limit of the store, in one place.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Bytes per segment file (preallocated).
    pub segment_bytes: u32,
    /// Bytes one commit batch may hold; beyond it the store submits the batch (waiting for the
    /// one in flight first) and starts another, so staged memory stays below two batches. Also
    /// bounds what recovery zeroes as a torn tail.
    pub batch_bytes_max: u32,
    /// Largest packet accepted (MSMQ: 4 MB).
    pub message_bytes_max: u32,
    /// Machine byte quota over stored packets (MSMQ `MachineQuota`).
    pub machine_bytes_max: u64,
    /// Machine message limit; bounds the in-memory index.
    pub machine_messages_max: u64,
    /// Quota for queues without their own.
    pub queue_quota_default: QueueQuota,
    /// Queues the index holds at most.
    pub queues_max: u32,
    /// Compaction copies the oldest segment's live messages forward when there are at least
    /// this many segments...
    pub compact_segments_min: u32,
    /// ...and the oldest segment's live record bytes are at most this percent of its size.
    pub compact_live_percent: u32,
    /// Bytes copied forward per `maintain` call at most.
    pub compact_bytes_per_call: u32,
    /// Bytes at the end of each segment that only removal records may use, so messages can be
    /// consumed (and space reclaimed) when the disk is too full for a new segment.
    pub removal_reserve_bytes: u32,
    /// Start-up: instead of refusing on damage, keep every record that verifies and write a
    /// filler over each damaged region (the caller copies damaged files aside first).
    pub salvage: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: 64 << 20,
            batch_bytes_max: 8 << 20,
            message_bytes_max: 4 << 20,
            machine_bytes_max: 8 << 30,
            machine_messages_max: 50_000_000,
            queue_quota_default: QueueQuota::UNLIMITED,
            queues_max: 65_536,
            compact_segments_min: 4,
            compact_live_percent: 25,
            compact_bytes_per_call: 4 << 20,
            removal_reserve_bytes: 256 << 10,
            salvage: false,
        }
    }
}

/// What start-up found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: u32,
    /// Records replayed.
    pub records: u64,
    /// Messages in the index afterwards.
    pub messages: u64,
    /// Bytes zeroed at the tail (a torn last batch).
    pub cut_bytes: u64,
    /// Whether damage was salvaged (only with `salvage`).
    pub salvaged: bool,
    /// Damaged regions skipped by salvage, and their bytes.
    pub holes: u32,
    /// Bytes of the damaged regions skipped.
    pub skipped_bytes: u64,
    /// Bytes whose crc recovery computed (bounds its work: stale data costs no crc).
    pub crc_bytes: u64,
}

/// What `maintain` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Segments deleted or recycled.
    pub segments_reclaimed: u32,
    /// Messages copied forward out of the oldest segment.
    pub messages_copied: u32,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages stored (all queues, including reserved-but-unreleased).
    pub messages: u64,
    /// Packet bytes stored.
    pub bytes: u64,
    /// Segment files.
    pub segments: u32,
    /// Bytes waiting for the next flush.
    pub pending_bytes: u64,
    /// The durable watermark.
    pub durable: Ticket,
    /// Commit batches completed.
    pub batches: u64,
}

/// The interface between the queue manager and the store.
///
/// Batching is explicit: `append`/`receive`/`purge` only stage records; `flush` starts a group
/// commit of everything staged (at most one is in flight; a flush while one is in flight is
/// remembered and started when it completes); `poll_durable` reaps completions and returns the
/// watermark. The event loop calls `flush` then `poll_durable(false)` once per turn.
pub trait QueueStore: Sync {
    /// Stage a message. Recoverable/transactional messages become visible to peek/receive, and
    /// may be acknowledged, once their ticket is durable; express ones at once.
    fn append(
        &mut self,
        queue: QueueId,
        meta: &MessageMeta,
        bytes: &[u8],
    ) -> Result<Appended, StoreError>;
    /// Start a group commit of everything staged (no-op if nothing is).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Reap commit completions (blocking for one if `wait` and one is in flight) and return the
    /// watermark: every ticket below it is durable.
    fn poll_durable(&mut self, wait: bool) -> Result<Ticket, StoreError>;
    /// Whether `ticket` is durable.
    fn is_durable(&self, ticket: Ticket) -> bool;
    /// Look at a visible message without removing it.
    fn peek(&self, queue: QueueId, select: Select) -> Option<MessageRef<'_>>;
    /// Walk a queue in delivery order: the next visible message after `cursor`.
    fn cursor_next(&self, cursor: &mut Cursor) -> Option<MessageRef<'_>>;
    /// Take a visible message out of its queue and stage its removal record.
    fn receive(
        &mut self,
        queue: QueueId,
        select: Select,
    ) -> Result<Option<Reservation>, StoreError>;
    /// The reserved message, once its removal is durable (`NotDurable` before).
    fn reserved(&self, reservation: &Reservation) -> Result<MessageRef<'_>, StoreError>;
    /// Forget a delivered reservation (its removal must be durable); frees its space.
    fn release(&mut self, reservation: Reservation) -> Result<(), StoreError>;
    /// Remove every message of `queue` (staged removal record; effective in the index now).
    fn purge(&mut self, queue: QueueId) -> Result<Ticket, StoreError>;
    /// Purge `queue` and forget its quota.
    fn delete_queue(&mut self, queue: QueueId) -> Result<Ticket, StoreError>;
    /// Set a queue's quota. Messages already stored are never harmed by a lower quota.
    fn set_queue_quota(&mut self, queue: QueueId, quota: QueueQuota);
    /// Messages (at most `max`) whose expiry is `<= now_unix_s`, for the dead-letter queue.
    fn expired(&self, now_unix_s: u32, max: usize, out: &mut Vec<(QueueId, LookupId)>);
    /// Visible and not-yet-durable messages and bytes in `queue`.
    fn queue_len(&self, queue: QueueId) -> (u64, u64);
    /// Reclaim consumed segments and copy a few old live messages forward.
    fn maintain(&mut self) -> Result<Maintenance, StoreError>;
    /// Counters.
    fn stats(&self) -> StoreStats;
    /// Signal eventfd `fd` when a commit completes (see `Disk::set_notify`); stores
    /// without a ring of their own ignore it.
    fn set_notify(&mut self, fd: std::os::fd::RawFd) -> Result<(), StoreError> {
        let _ = fd;
        Ok(())
    }
    /// Hand commit writes and fdatasyncs to the calling shard's ring (`on`), or drive them
    /// itself again (`!on`); see [`Disk::stage_on_shard`]. Returns whether it now stages.
    /// Stores without a ring of their own (in memory, simulated) return false.
    fn stage_on_shard(&mut self, on: bool) -> Result<bool, StoreError> {
        let _ = on;
        Ok(false)
    }
    /// The staged file operations of the commit in flight ([`Disk::take_ops`]); each token
    /// is below `1 << DISK_TOKEN_BITS`.
    fn take_file_ops(&mut self, out: &mut Vec<crate::engine::app::FileOp>) {
        let _ = out;
    }
    /// The kernel's result for a token from [`QueueStore::take_file_ops`]; the next
    /// [`QueueStore::poll_durable`] acts on it (a failure poisons the log).
    fn file_complete(&mut self, token: u64, result: i32) {
        let _ = (token, result);
    }
}
