//! `mbarrier` (PTX ISA, "Parallel synchronization and communication instructions: mbarrier"):
//! per-block state keyed by the barrier's shared-window address.
//!
//! A barrier counts, for its current phase, the arrivals still pending (reset to the expected
//! count when a phase completes) and the transaction bytes still outstanding: `expect_tx` adds,
//! a copy's `complete_tx` subtracts, so the count goes negative when bytes land before they
//! are announced. A phase completes when both reach zero. `try_wait.parity p` is true iff the
//! phase of parity `p` has completed, i.e. the current (incomplete) phase's parity is not `p`:
//! before anything completes, `try_wait(1)` is true (the "phase before phase 0") and
//! `try_wait(0)` false, which is what a producer's first wait on an empty slot relies on.
//!
//! In a cluster, a barrier lives in one block's state; a remote arrival (`arrive_cluster`) or a
//! multicast copy's `complete_tx` from another block changes that block's barrier directly (the
//! blocks of a cluster run on one OS thread, so nothing else touches it meanwhile).

use super::race::Races;
use super::{Hopper, cta_relative, with_hopper, with_hopper_in};
use crate::device::emu::block::{ctx, spin_wait};
use crate::device::emu::cluster::peer;
use crate::device::emu::shared::shared_window;
use crate::device::types::Dim3;

/// The most arrivals a barrier expects, and the largest transaction count either way (PTX ISA:
/// both lie in the range ±(2^20 − 1)).
const MAX_COUNT: i64 = (1 << 20) - 1;

struct Barrier {
    addr: u32,
    expected: u32,
    pending: u32,
    /// Bytes announced minus bytes landed, in the current phase.
    tx: i64,
    /// Phases completed since `init` (the current phase's number).
    completed: u64,
    /// Who last announced bytes, for the error about bytes that never land.
    announced_by: Dim3,
    /// Threads now waiting in `wait`, per parity (for deadlock reports).
    waiters: [u32; 2],
    /// Its entry in the vector clocks (see `race.rs`), the join of the current phase's
    /// arrivals, and the clock of the last completed phase of each parity.
    agent: usize,
    arrivals: Vec<u32>,
    done: [Vec<u32>; 2],
}

impl Barrier {
    /// Completes the phase if nothing is outstanding; its clock records the completion.
    fn settle(&mut self) {
        if self.pending == 0 && self.tx == 0 {
            let mut clock = std::mem::take(&mut self.arrivals);
            if clock.len() <= self.agent {
                clock.resize(self.agent + 1, 0);
            }
            self.completed += 1;
            clock[self.agent] = self.completed as u32;
            self.done[(self.completed - 1) as usize % 2] = clock;
            self.pending = self.expected;
        }
    }

    fn state(&self) -> String {
        format!(
            "phase {}: {} of {} arrivals pending, {}",
            self.completed,
            self.pending,
            self.expected,
            tx_words(self.tx)
        )
    }
}

fn tx_words(tx: i64) -> String {
    match tx {
        0 => "no transaction bytes outstanding".into(),
        t if t > 0 => format!("{t} transaction bytes announced but not landed"),
        t => format!("{} bytes landed but never announced (expect_tx)", -t),
    }
}

fn thread_name(t: Dim3) -> String {
    format!("thread ({}, {}, {})", t.x, t.y, t.z)
}

/// The block's barriers (a handful: a linear search beats hashing).
#[derive(Default)]
pub(super) struct Mbarriers {
    bars: Vec<Barrier>,
}

impl Mbarriers {
    fn get(&mut self, addr: u32, op: &str) -> &mut Barrier {
        match self.bars.iter().position(|b| b.addr == addr) {
            Some(i) => &mut self.bars[i],
            None => panic!(
                "{op} on shared address {addr:#x}, which no mbarrier.init has initialised \
                 (in this block)"
            ),
        }
    }

    fn init(&mut self, races: &mut Races, addr: u32, count: u32) {
        if !(1..=MAX_COUNT as u32).contains(&count) {
            panic!("mbarrier.init at {addr:#x}: arrival count {count} is outside 1..=2^20-1");
        }
        let fresh = Barrier {
            addr,
            expected: count,
            pending: count,
            tx: 0,
            completed: 0,
            announced_by: Dim3::new(0, 0, 0),
            waiters: [0; 2],
            agent: races.new_agent(ctx().block_dim.count() as usize),
            arrivals: Vec::new(),
            done: Default::default(),
        };
        match self.bars.iter_mut().find(|b| b.addr == addr) {
            Some(b) if b.pending != b.expected || b.tx != 0 => panic!(
                "mbarrier.init at {addr:#x} re-initialises a barrier with work pending ({}); \
                 wait for the phase to complete (or mbarrier.inval) first",
                b.state()
            ),
            Some(b) => *b = fresh,
            None => self.bars.push(fresh),
        }
    }

    /// An arrival by the running thread; `local` false for one from another block of the
    /// cluster, which carries no happens-before edge (the race model is per block: see
    /// `race.rs`).
    fn arrive(&mut self, races: &mut Races, addr: u32, tx_bytes: Option<u32>, local: bool) {
        let op = match (tx_bytes.is_some(), local) {
            (true, _) => "mbarrier.arrive.expect_tx",
            (false, true) => "mbarrier.arrive",
            (false, false) => "mbarrier.arrive.release.cluster.shared::cluster",
        };
        let b = self.get(addr, op);
        if let Some(bytes) = tx_bytes {
            b.tx += bytes as i64;
            if b.tx > MAX_COUNT {
                panic!(
                    "{op} on the mbarrier at {addr:#x}: {bytes} more bytes take the transaction \
                     count to {}, past 2^20-1",
                    b.tx
                );
            }
            b.announced_by = ctx().thread_idx;
        }
        if b.pending == 0 {
            panic!(
                "{op} on the mbarrier at {addr:#x}: more arrivals than the {} expected in phase \
                 {} (all have arrived; the phase waits on {})",
                b.expected,
                b.completed,
                tx_words(b.tx)
            );
        }
        b.pending -= 1;
        if local {
            races.release(ctx().rank as usize, &mut b.arrivals);
        }
        b.settle();
    }

    /// `complete_tx`: `bytes` landed for the barrier at `addr` (by the copy `op`).
    pub(super) fn complete_tx(&mut self, addr: u32, bytes: u32, op: &str) {
        let b = self.get(addr, op);
        b.tx -= bytes as i64;
        if b.tx < -MAX_COUNT {
            panic!(
                "{op}: {bytes} bytes landing on the mbarrier at {addr:#x} take its transaction \
                 count to {}, past -(2^20-1) (bytes that no expect_tx announced)",
                b.tx
            );
        }
        b.settle();
    }

    /// Refuses a copy into `[dst, dst + bytes)` whose barrier is not initialised, or that
    /// would overwrite a live barrier; returns the barrier's clock entry and current phase.
    pub(super) fn check_copy(&mut self, bar: u32, dst: u32, bytes: u32, op: &str) -> (usize, u64) {
        let b = self.get(bar, op);
        let (agent, phase) = (b.agent, b.completed);
        let end = dst as u64 + bytes as u64;
        if let Some(b) = self
            .bars
            .iter()
            .find(|b| (dst as u64) < b.addr as u64 + 8 && (b.addr as u64) < end)
        {
            panic!(
                "{op}: the copy into shared [{dst:#x}, {end:#x}) overwrites the mbarrier at {:#x}",
                b.addr
            );
        }
        (agent, phase)
    }

    /// Whether the phase of parity `parity` has completed; if so, the calling thread has
    /// observed it (and acquires its clock).
    fn try_wait(&mut self, races: &mut Races, addr: u32, parity: u32) -> bool {
        let b = self.get(addr, "mbarrier.try_wait.parity");
        if parity > 1 {
            panic!(
                "mbarrier.try_wait.parity on {addr:#x} with parity {parity}: the parity is 0 or 1 \
                 (pass the use count & 1)"
            );
        }
        let done = (b.completed & 1) as u32 != parity;
        // The phase observed is the last completed one of that parity; none before phase 0
        // completes (the initial "phase -1" is true and carries nothing).
        if done && b.completed > 0 {
            races.acquire(ctx().rank as usize, &b.done[parity as usize]);
        }
        done
    }

    fn waiting(&mut self, addr: u32, parity: u32, delta: i32) {
        let b = self.get(addr, "mbarrier.try_wait.parity");
        let w = &mut b.waiters[parity as usize];
        *w = w.wrapping_add_signed(delta);
    }
}

impl Mbarriers {
    /// For a deadlock report: each barrier that threads wait on.
    pub(super) fn describe_waits(&self, parts: &mut Vec<String>) {
        for b in &self.bars {
            let n = b.waiters[0] + b.waiters[1];
            if n > 0 {
                parts.push(format!(
                    "{n} threads wait on the mbarrier at {:#x} ({})",
                    b.addr,
                    b.state()
                ));
            }
        }
    }

    /// At block exit: bytes announced that never landed, or landed unannounced.
    pub(super) fn on_block_exit(&self) -> Result<(), String> {
        for b in &self.bars {
            if b.tx > 0 {
                return Err(format!(
                    "the mbarrier at {:#x} ended with {} transaction bytes announced (by {}) in \
                     phase {} that never landed: no copy delivered them",
                    b.addr,
                    b.tx,
                    thread_name(b.announced_by),
                    b.completed
                ));
            }
            if b.tx < 0 {
                return Err(format!(
                    "the mbarrier at {:#x} ended with {} bytes landed in phase {} that no \
                     arrive.expect_tx announced",
                    b.addr, -b.tx, b.completed
                ));
            }
        }
        Ok(())
    }
}

/// `mbarrier.init.shared::cta.b64 [bar], count`.
pub fn mbarrier_init(bar: u32, count: u32) {
    cta_relative(bar, "mbarrier.init.shared::cta");
    if !bar.is_multiple_of(8) {
        panic!("mbarrier.init at shared address {bar:#x}: a barrier is 8-byte aligned");
    }
    if !shared_window().contains(bar, 8) {
        panic!("mbarrier.init at shared address {bar:#x}: outside the block's shared memory");
    }
    with_hopper(|h: &mut Hopper| h.bars.init(&mut h.races, bar, count))
}

/// `mbarrier.arrive.shared::cta.b64 _, [bar]`.
pub fn mbarrier_arrive(bar: u32) {
    cta_relative(bar, "mbarrier.arrive.shared::cta");
    with_hopper(|h| h.bars.arrive(&mut h.races, bar, None, true))
}

/// `mapa.shared::cluster.u32 r, bar, rank` + `mbarrier.arrive.release.cluster.shared::cluster.b64
/// _, [r]`: an arrival on the barrier at offset `bar` of the cluster's block `rank`.
pub fn mbarrier_arrive_cluster(bar: u32, rank: u32) {
    const OP: &str = "mbarrier.arrive.release.cluster.shared::cluster";
    cta_relative(bar, OP);
    let block = peer(rank, OP);
    if block.cluster_rank == ctx().block().cluster_rank {
        return with_hopper(|h| h.bars.arrive(&mut h.races, bar, None, true));
    }
    if block.live.get() == 0 {
        panic!(
            "{OP} on the mbarrier at {bar:#x} of block rank {rank}, whose threads have all \
             exited: its shared memory is gone (cluster_sync before a block exits)"
        );
    }
    with_hopper_in(block, |h| h.bars.arrive(&mut h.races, bar, None, false))
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes`: announces `bytes`, then
/// arrives (the bytes count in the phase the arrival belongs to).
pub fn mbarrier_arrive_expect_tx(bar: u32, bytes: u32) {
    cta_relative(bar, "mbarrier.arrive.expect_tx.shared::cta");
    with_hopper(|h| h.bars.arrive(&mut h.races, bar, Some(bytes), true))
}

/// `mbarrier.try_wait.parity`: whether the phase of parity `parity` has completed.
pub fn mbarrier_try_wait(bar: u32, parity: u32) -> bool {
    cta_relative(bar, "mbarrier.try_wait.parity.shared::cta");
    with_hopper(|h| h.bars.try_wait(&mut h.races, bar, parity))
}

/// A `try_wait.parity` loop: a `spin_wait`, so a wait nothing can satisfy is reported as a
/// deadlock, with the state of every barrier waited on.
pub fn mbarrier_wait(bar: u32, parity: u32) {
    if mbarrier_try_wait(bar, parity) {
        return;
    }
    with_hopper(|h| h.bars.waiting(bar, parity, 1));
    spin_wait("mbarrier.try_wait.parity", || {
        mbarrier_try_wait(bar, parity)
    });
    with_hopper(|h| h.bars.waiting(bar, parity, -1));
}
