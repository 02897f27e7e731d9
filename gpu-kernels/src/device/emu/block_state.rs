//! Per-block state for other emulator modules: what the `mbarrier`, TMA and `wgmma` emulation
//! (`hopper/`) hangs on a block (barrier phases, transaction counts, `wgmma` groups), with hooks
//! the scheduler calls at each `sync_threads`, when the block cannot make progress, when it is
//! reported deadlocked, and when it ends.

use super::block::{Block, ctx};
use super::shared::SharedWindow;
use std::any::{Any, TypeId};
use std::cell::RefCell;

/// Per-block state a module of the emulator hangs on a block (pending async copies, mbarriers,
/// TMA transactions…): created with `Default` on first use in each block (see
/// [`with_block_state`]), dropped when the block ends.
pub trait BlockExtension: Any {
    /// Called when no thread of the block can run: every live thread waits at a barrier or a
    /// collective or polls in `spin_wait` in vain. Complete what would complete by itself on
    /// the GPU (an async copy landing in shared memory) and return true if that may satisfy a
    /// waiting condition; false means nothing is pending, and the launch fails as deadlocked.
    fn on_idle(&mut self, shared: SharedWindow) -> bool {
        let _ = shared;
        false
    }
    /// Called when thread `rank` arrives at `sync_threads`, before it waits (to record what
    /// it releases to the others), and …
    fn before_sync_threads(&mut self, rank: u32) {
        let _ = rank;
    }
    /// … when it leaves, every live thread having arrived (to acquire what they released).
    fn after_sync_threads(&mut self, rank: u32) {
        let _ = rank;
    }
    /// Called when the block is reported deadlocked: add what the waiting threads wait for
    /// (e.g. each `mbarrier` waited on, with its pending arrivals and bytes) to `parts`.
    fn describe_waits(&self, parts: &mut Vec<String>) {
        let _ = parts;
    }
    /// Called once every thread of the block has exited normally; an error fails the launch
    /// with the block's coordinates (e.g. async copies issued but never waited for).
    fn on_block_exit(&mut self, shared: SharedWindow) -> Result<(), String> {
        let _ = shared;
        Ok(())
    }
}

/// Runs `f` on the running block's `S` (created with `Default` on first use in the block).
/// `f` must not wait (no barrier, collective or yield inside it).
pub fn with_block_state<S: BlockExtension + Default, R>(f: impl FnOnce(&mut S) -> R) -> R {
    with_block_state_in(ctx().block(), f)
}

/// [`with_block_state`] on `block`, which may be another block of the running thread's
/// cluster (a remote arrival, a multicast copy landing there).
pub(super) fn with_block_state_in<S: BlockExtension + Default, R>(
    block: &Block,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    let mut exts = block.extensions.0.borrow_mut();
    let i = match exts
        .iter()
        .position(|e| (&**e as &dyn Any).type_id() == TypeId::of::<S>())
    {
        Some(i) => i,
        None => {
            exts.push(Box::new(S::default()));
            exts.len() - 1
        }
    };
    let ext: &mut dyn Any = &mut *exts[i];
    f(ext
        .downcast_mut::<S>()
        .expect("block state of the type it was found by"))
}

/// A block's extensions, in first-use order.
#[derive(Default)]
pub(super) struct Extensions(RefCell<Vec<Box<dyn BlockExtension>>>);

impl Extensions {
    pub(super) fn clear(&mut self) {
        self.0.get_mut().clear();
    }
    /// Every extension's `on_idle`; true if any may have changed something.
    pub(super) fn on_idle(&self, shared: SharedWindow) -> bool {
        self.0
            .borrow_mut()
            .iter_mut()
            .fold(false, |woke, e| e.on_idle(shared) | woke)
    }
    /// Every extension's `before_sync_threads` (`after` false) or `after_sync_threads`.
    pub(super) fn on_sync_threads(&self, rank: u32, after: bool) {
        for e in self.0.borrow_mut().iter_mut() {
            if after {
                e.after_sync_threads(rank);
            } else {
                e.before_sync_threads(rank);
            }
        }
    }
    /// Every extension's `describe_waits`, for a deadlock report.
    pub(super) fn describe_waits(&self, parts: &mut Vec<String>) {
        for e in self.0.borrow().iter() {
            e.describe_waits(parts);
        }
    }
    /// The first error of the extensions' `on_block_exit`.
    pub(super) fn on_block_exit(&self, shared: SharedWindow) -> Result<(), String> {
        self.0
            .borrow_mut()
            .iter_mut()
            .try_for_each(|e| e.on_block_exit(shared))
    }
}
