//! Races between the async proxy's shared-memory accesses: TMA and bulk copies that write a
//! buffer, `wgmma`s that read it. A pipeline orders them only through `mbarrier`s (and block
//! barriers); a missing wait is a race the emulator's one-at-a-time schedule would usually
//! hide, so these accesses are checked against a happens-before relation instead, with vector
//! clocks (one entry per thread, and one per `mbarrier`, counting its completed phases):
//!
//! - program order within a thread;
//! - `sync_threads`: everything before it in any thread happens before everything after it;
//! - `mbarrier`: an arrival happens before whatever follows a `try_wait` that observes the
//!   completion of the phase it arrived in (the completed phase's clock is the join of its
//!   arrivals', and records the phase);
//! - a copy's bytes have landed for whoever observed the completion of the barrier phase the
//!   copy counted in.
//!
//! Clusters: the clocks are per block. Within a block everything above holds, whatever other
//! blocks do. Across blocks nothing is tracked: a remote arrival (`arrive_cluster`) completes
//! the peer's phase but adds no edge to its clock, and a multicast copy that lands in a peer's
//! memory is checked there for read-after-write (the peer's `wgmma`s must have seen the
//! peer's own barrier phase complete, which is how a multicast is consumed) but not for
//! write-after-read (the issuing thread has no clock in the peer). So a producer that refills
//! a multicast slot before the *peer's* consumers released it is not reported by this
//! module; with the emulator's copies landing at once it overwrites data those consumers have
//! yet to read, which a kernel's result check sees.
//!
//! Checked: a `wgmma` may read bytes a copy wrote only if some thread of its warpgroup observed
//! that copy's phase complete before issuing it (read after write); a copy may overwrite bytes
//! a `wgmma` read only if, for some thread of the reading warpgroup, that thread's
//! `wgmma.wait_group` retiring the read happens before the copy is issued (write after read:
//! a `wgmma` reads its operands at any time until the wait). Not tracked: ordinary loads and
//! stores, warp collectives, atomics and spin-waits on ordinary memory as orderings (a kernel
//! that orders copies and `wgmma`s only through those would be reported).

/// Shared memory is tracked in lines of this many bytes (a 128B-swizzle row: a `wgmma` reads
/// 32 bytes of each row of its operands, a TMA box writes whole rows).
const LINE: u32 = 128;

/// The last copy that wrote a line: the barrier (its clock entry and address), the phase the
/// copy counted in, and the copy instruction.
#[derive(Clone, Copy)]
struct Written {
    agent: usize,
    bar: u32,
    phase: u64,
    op: &'static str,
}

#[derive(Clone, Default)]
struct Line {
    /// Reads (`ReadOp` ids) since the last write.
    reads: Vec<u32>,
    written: Option<Written>,
}

/// One `wgmma`'s reads of shared memory: which warpgroup, and per member the epoch of the
/// `wgmma.wait_group` that retired it (0: not yet).
struct ReadOp {
    what: &'static str,
    first: u32,
    ends: Vec<u32>,
    /// Lines whose `reads` name this op, plus members that have not retired it (free at 0).
    refs: u32,
}

#[derive(Default)]
pub(super) struct Races {
    /// Per thread, its vector clock: entries `0..threads` are threads, then barrier agents.
    vc: Vec<Vec<u32>>,
    threads: usize,
    agents: usize,
    /// `sync_threads`: per thread the barriers it passed; the join of the arrivals of barrier
    /// `g`, in slot `g % 2` tagged `g`.
    sync_passed: Vec<u64>,
    sync_acc: [(u64, Vec<u32>); 2],
    lines: Vec<Line>,
    ops: Vec<ReadOp>,
    free: Vec<u32>,
}

fn join(dst: &mut Vec<u32>, src: &[u32]) {
    if dst.len() < src.len() {
        dst.resize(src.len(), 0);
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = (*d).max(*s);
    }
}

fn at(v: &[u32], i: usize) -> u32 {
    v.get(i).copied().unwrap_or(0)
}

impl Races {
    /// Sized for a block of `threads` on first use: every thread at epoch 1 of itself.
    fn ready(&mut self, threads: usize) {
        if self.vc.is_empty() {
            self.threads = threads;
            self.vc = (0..threads)
                .map(|t| {
                    let mut v = vec![0; threads];
                    v[t] = 1;
                    v
                })
                .collect();
            self.sync_passed = vec![0; threads];
            self.sync_acc = [(0, Vec::new()), (1, Vec::new())];
        }
    }

    fn lines(&mut self, addr: u32, bytes: u32) -> std::ops::Range<usize> {
        let (a, b) = (
            (addr / LINE) as usize,
            (addr + bytes).div_ceil(LINE) as usize,
        );
        if self.lines.len() < b {
            self.lines.resize(b, Line::default());
        }
        a..b
    }

    /// A clock entry for a new barrier (a re-initialised one gets a new entry: its phases
    /// count from 0 again).
    pub(super) fn new_agent(&mut self, threads: usize) -> usize {
        self.ready(threads);
        self.agents += 1;
        self.threads + self.agents - 1
    }

    /// Thread `rank` releases into `into` (an arrival): joins its clock, then starts a new
    /// epoch so that its later events are not covered.
    pub(super) fn release(&mut self, rank: usize, into: &mut Vec<u32>) {
        join(into, &self.vc[rank]);
        self.vc[rank][rank] += 1;
    }

    /// Thread `rank` acquires `from` (a completed phase it observed).
    pub(super) fn acquire(&mut self, rank: usize, from: &[u32]) {
        join(&mut self.vc[rank], from);
    }

    pub(super) fn before_sync(&mut self, rank: usize) {
        if self.vc.is_empty() {
            return;
        }
        let g = self.sync_passed[rank];
        let slot = &mut self.sync_acc[(g % 2) as usize];
        if slot.0 != g {
            *slot = (g, Vec::new());
        }
        join(&mut slot.1, &self.vc[rank]);
        self.vc[rank][rank] += 1;
    }

    pub(super) fn after_sync(&mut self, rank: usize) {
        if self.vc.is_empty() {
            return;
        }
        let g = self.sync_passed[rank];
        self.sync_passed[rank] = g + 1;
        let slot = &self.sync_acc[(g % 2) as usize];
        if slot.0 == g {
            join(&mut self.vc[rank], &slot.1);
        }
    }

    /// Thread `rank` issues `op`, writing `[dst, dst + bytes)`, counted in `phase` of the
    /// barrier at `bar` (clock entry `agent`): every `wgmma` read of those bytes must have
    /// been retired by a wait that happens before this. `rank` is None for a multicast copy
    /// issued by another block of the cluster: its issuing thread has no clock here, so the
    /// write-after-read check is skipped (see the module docs); the write is still recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &mut self,
        threads: usize,
        rank: Option<usize>,
        op: &'static str,
        dst: u32,
        bytes: u32,
        bar: u32,
        agent: usize,
        phase: u64,
    ) {
        self.ready(threads);
        for l in self.lines(dst, bytes) {
            for id in std::mem::take(&mut self.lines[l].reads) {
                let r = &self.ops[id as usize];
                let retired = rank.is_none_or(|rank| {
                    r.ends.iter().enumerate().any(|(m, &end)| {
                        end != 0 && at(&self.vc[rank], r.first as usize + m) >= end
                    })
                });
                if !retired {
                    let wg = r.first / 128;
                    panic!(
                        "{op} into shared [{dst:#x}, {:#x}) overwrites bytes at {:#x} that a \
                         {} of warpgroup {wg} (threads {}..={}) may still be reading: no thread \
                         of that warpgroup retired it (wgmma.wait_group) and then released the \
                         buffer to this thread (mbarrier arrive → wait, or sync_threads) before \
                         the copy was issued",
                        dst + bytes,
                        l as u32 * LINE,
                        r.what,
                        r.first,
                        r.first + 127
                    );
                }
                self.unref(id);
            }
            self.lines[l].written = Some(Written {
                agent,
                bar,
                phase,
                op,
            });
        }
    }

    fn unref(&mut self, id: u32) {
        let r = &mut self.ops[id as usize];
        r.refs -= 1;
        if r.refs == 0 {
            self.free.push(id);
        }
    }

    /// The warpgroup starting at thread `first` issues `what`, reading the 128-byte lines at
    /// `rows` (one address per operand row): every copy that wrote them must have been seen
    /// complete by one of its threads. Returns the read's id, for [`Self::retire`].
    pub(super) fn read(
        &mut self,
        threads: usize,
        first: u32,
        what: &'static str,
        rows: &[u32],
    ) -> u32 {
        self.ready(threads);
        let members = first as usize..first as usize + 128;
        let id = match self.free.pop() {
            Some(id) => {
                let r = &mut self.ops[id as usize];
                // Each member holds it until its wait retires it.
                (r.what, r.first, r.refs) = (what, first, 128);
                r.ends.iter_mut().for_each(|e| *e = 0);
                id
            }
            None => {
                self.ops.push(ReadOp {
                    what,
                    first,
                    ends: vec![0; 128],
                    refs: 128,
                });
                self.ops.len() as u32 - 1
            }
        };
        let mut last = usize::MAX;
        for &addr in rows {
            let l = self.lines(addr, 1).start;
            if l == last {
                continue;
            }
            last = l;
            if let Some(w) = self.lines[l].written {
                let seen = members
                    .clone()
                    .any(|m| at(&self.vc[m], w.agent) > w.phase as u32);
                if !seen {
                    panic!(
                        "{what} reads shared memory at {addr:#x}, which {} fills on the mbarrier \
                         at {:#x} in phase {}, but no thread of the warpgroup (threads {}..={}) \
                         has waited for that phase to complete",
                        w.op,
                        w.bar,
                        w.phase,
                        first,
                        first + 127
                    );
                }
            }
            if self.lines[l].reads.last() != Some(&id) {
                self.lines[l].reads.push(id);
                self.ops[id as usize].refs += 1;
            }
        }
        id
    }

    /// Thread `rank`'s `wgmma.wait_group` retired the reads `ids` (at its current epoch).
    pub(super) fn retire(&mut self, rank: usize, ids: &[u32]) {
        let epoch = self.vc[rank][rank];
        for &id in ids {
            let r = &mut self.ops[id as usize];
            r.ends[rank - r.first as usize] = epoch;
            self.unref(id);
        }
    }
}
