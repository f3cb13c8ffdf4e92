//! A partition's commit writes and fdatasyncs on its shard's own ring (issue 10, S8): the
//! shard's app takes the staged operations of the partitions it runs after each turn, tagging
//! each token with the partition, and hands the completions back by that tag.

use crate::engine::app::FileOp;
use crate::store::{QueueStore, StoreError, DISK_TOKEN_BITS};

use super::Broker;

/// Partitions whose index fits a file op's token above the disk's bits (the engine carries
/// 56); a partition beyond stays on its store's own ring.
pub const FILE_OP_PARTITIONS_MAX: usize =
    1 << (crate::engine::app::FILE_TOKEN_BITS - DISK_TOKEN_BITS);

impl<S: QueueStore> Broker<S> {
    /// Partition `p`'s commit writes and syncs go to the calling shard's ring (`on`), or back
    /// to the store's own driver (`!on`, once that shard's loop is over). Returns whether the
    /// partition now stages them.
    pub fn stage_on_shard(&self, p: usize, on: bool) -> Result<bool, StoreError> {
        if on && p >= FILE_OP_PARTITIONS_MAX {
            return Ok(false);
        }
        self.partition(p).store.stage_on_shard(on)
    }

    /// Moves partition `p`'s staged file operations into `out`, their tokens tagged with `p`.
    pub fn take_file_ops(&self, p: usize, out: &mut Vec<FileOp>) {
        let start = out.len();
        self.partition(p).store.take_file_ops(out);
        for op in &mut out[start..] {
            op.token |= (p as u64) << DISK_TOKEN_BITS;
        }
    }

    /// The result of a file operation from [`Broker::take_file_ops`]; the partition's next
    /// commit acts on it.
    pub fn file_complete(&self, token: u64, result: i32) {
        let p = (token >> DISK_TOKEN_BITS) as usize;
        if p >= self.partition_count() {
            tracing::error!(token, "a file completion names no partition; dropped");
            return;
        }
        self.partition(p)
            .store
            .file_complete(token & ((1 << DISK_TOKEN_BITS) - 1), result);
    }
}
