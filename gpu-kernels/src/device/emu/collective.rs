//! Collectives over a group of lanes (a warp, or a Hopper warpgroup of 4 warps): every live
//! member publishes a few words, waits for the others, then reads any member's words (and the
//! block's shared memory by address). Warp shuffles, votes and `mma.sync` are built on this;
//! `wgmma` can be.

use super::block::{Gate, Queue, Suspend, abort, ctx};
use super::shared::SharedWindow;
use crate::device::types::WARP_SIZE;
use std::cell::{Cell, Ref, RefCell};

/// The lanes that take part in a collective: a warp, or a Hopper warpgroup (4 consecutive warps,
/// the 128 threads that issue a `wgmma` together). Groups are consecutive thread ranks; the
/// last group of a block that is not a whole number of groups is partial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Warp = 0,
    Warpgroup = 1,
}
pub(super) const GROUP_KINDS: usize = 2;

impl Group {
    /// Threads in a whole group.
    pub const fn size(self) -> u32 {
        match self {
            Group::Warp => WARP_SIZE,
            Group::Warpgroup => 4 * WARP_SIZE,
        }
    }
    pub(super) fn noun(self) -> (&'static str, &'static str) {
        match self {
            Group::Warp => ("warp", "lanes"),
            Group::Warpgroup => ("warpgroup", "threads"),
        }
    }
}

/// One warp's (or warpgroup's) collective state: who waits, and the words each member
/// published, in two sets used alternately. A member cannot start the collective after next
/// before every member has finished reading this one (they all had to reach the next one
/// first), so two sets suffice.
struct GroupState {
    members: u32,
    gate: Gate,
    /// The collective in progress (named by the first member to arrive) and its width.
    what: Cell<&'static str>,
    width: Cell<usize>,
    words: [RefCell<Vec<u32>>; 2],
    /// Per member: 1 + the sequence number of its last publication in that set (0: none).
    stamps: [RefCell<Vec<u64>>; 2],
    /// A result computed once per collective (`Exchange::once`), with the stamp it is for.
    results: [RefCell<(u64, Vec<u32>)>; 2],
}

impl GroupState {
    fn new(members: u32) -> Self {
        GroupState {
            members,
            gate: Gate::new(members),
            what: Cell::new(""),
            width: Cell::new(0),
            words: Default::default(),
            stamps: Default::default(),
            results: Default::default(),
        }
    }
}

/// A block's groups of each kind, indexed by `rank / size`.
pub(super) struct Groups([Vec<GroupState>; GROUP_KINDS]);

impl Groups {
    pub(super) fn new(threads: u32) -> Self {
        Groups([Group::Warp, Group::Warpgroup].map(|g| {
            (0..threads.div_ceil(g.size()))
                .map(|i| GroupState::new((threads - i * g.size()).min(g.size())))
                .collect()
        }))
    }

    fn of(&self, group: Group, rank: u32) -> &GroupState {
        &self.0[group as usize][(rank / group.size()) as usize]
    }

    /// Ready for a new block: nobody waiting, every member live, no stale publications (a
    /// stale stamp would pass an exited lane off as a member of a new collective).
    pub(super) fn reset(&mut self) {
        for g in self.0.iter_mut().flatten() {
            g.gate.reset(g.members);
            for s in &mut g.stamps {
                s.get_mut().fill(0);
            }
            for r in &mut g.results {
                r.get_mut().0 = 0;
            }
        }
    }

    /// Thread `rank` exited: its groups stop waiting for it.
    pub(super) fn leave(&self, rank: u32, queue: &Queue) {
        for group in [Group::Warp, Group::Warpgroup] {
            self.of(group, rank).gate.leave(queue);
        }
    }

    /// The collectives live threads wait at, for a deadlock report.
    pub(super) fn waits(&self, parts: &mut Vec<String>) {
        for (group, states) in [Group::Warp, Group::Warpgroup].iter().zip(&self.0) {
            let (noun, unit) = group.noun();
            for (i, g) in states.iter().enumerate() {
                let n = g.gate.waiting();
                if n > 0 {
                    parts.push(format!(
                        "{} in {noun} {i} reached by {n} of {} live {unit}",
                        g.what.get(),
                        g.gate.expected()
                    ));
                }
            }
        }
    }
}

/// What every member of a collective sees once all live members have published: any member's
/// words, and the block's shared memory. Handed to the closure of [`collective`].
pub struct Exchange<'a> {
    what: &'static str,
    group: Group,
    member: u32,
    members: u32,
    width: usize,
    stamp: u64,
    words: Ref<'a, Vec<u32>>,
    stamps: Ref<'a, Vec<u64>>,
    result: &'a RefCell<(u64, Vec<u32>)>,
    shared: SharedWindow,
}

impl Exchange<'_> {
    /// The calling thread's index in the group (its lane, for a warp).
    pub fn member(&self) -> u32 {
        self.member
    }
    /// Threads in the group (fewer than `Group::size` in a partial last group).
    pub fn members(&self) -> u32 {
        self.members
    }
    /// Whether `member` published in this collective (false if it has exited or is absent).
    pub fn took_part(&self, member: u32) -> bool {
        member < self.members && self.stamps[member as usize] == self.stamp
    }
    /// The words `member` published. Reading a member that is missing from a partial group or
    /// has exited is an error, as reading garbage would be on the GPU.
    pub fn words_of(&self, member: u32) -> &[u32] {
        if member >= self.members {
            let (group, unit) = self.group.noun();
            panic!(
                "{} reads lane {member} of a {group} with {} {unit} (blocks must be whole {group}s)",
                self.what, self.members
            );
        }
        if !self.took_part(member) {
            panic!("{} reads lane {member}, which has exited", self.what);
        }
        let at = member as usize * self.width;
        &self.words[at..at + self.width]
    }
    /// Every member's words, member-major (`members() × width`), checked once: for
    /// collectives that read many words of every member (`mma.sync`), where a check per read
    /// would cost more than the arithmetic. Every member must have taken part.
    pub fn all_words(&self) -> &[u32] {
        if let Some(m) = (0..self.members).find(|&m| !self.took_part(m)) {
            panic!("{} reads lane {m}, which has exited", self.what);
        }
        &self.words[..self.members as usize * self.width]
    }
    /// A result computed once per collective, by the first member to ask, and shared by all
    /// (`f` fills the empty buffer it is given): for instructions whose result is one value for
    /// the whole group, an `mma` or `wgmma` tile, so that members do not each recompute it.
    /// Every member must ask for the same thing. `f` must not wait.
    pub fn once(&self, f: impl FnOnce(&Self, &mut Vec<u32>)) -> Ref<'_, [u32]> {
        {
            let mut r = self.result.borrow_mut();
            if r.0 != self.stamp {
                r.1.clear();
                f(self, &mut r.1);
                r.0 = self.stamp;
            }
        }
        Ref::map(self.result.borrow(), |r| r.1.as_slice())
    }
    /// Word `i` of `member`'s publication.
    pub fn read(&self, member: u32, i: usize) -> u32 {
        self.words_of(member)[i]
    }
    /// The block's shared memory by shared-window address (for operands that a collective
    /// reads from or writes to shared memory, as `wgmma` descriptors do).
    pub fn shared(&self) -> SharedWindow {
        self.shared
    }
}

/// A collective over `group`: every live member publishes `words` (all the same length), waits
/// until all live members have, then runs `f`, which can read any member's words; returns what
/// `f` returns. All members must call it with the same `what` (the instruction, e.g.
/// `"shfl.sync.bfly.b32"`): a member arriving at a different collective is an error (on the
/// GPU: a hang or garbage). `f` must not wait (no barrier or collective inside it).
///
/// This is how warp shuffles, votes and `mma.sync` are emulated, and how a warpgroup-wide
/// instruction (`wgmma`) can be: publish the register operands, read the others' and the
/// shared-memory operands, compute this member's part of the result.
pub fn collective<R>(
    what: &'static str,
    group: Group,
    words: &[u32],
    f: impl FnOnce(&Exchange<'_>) -> R,
) -> R {
    let c = ctx();
    let block = c.block();
    if block.failed() {
        abort();
    }
    let g = block.groups.of(group, c.rank);
    let member = c.rank % group.size();
    let seq = c.seq[group as usize].get();
    c.seq[group as usize].set(seq + 1);
    let set = (seq % 2) as usize;
    let width = words.len();
    if g.gate.waiting() == 0 {
        g.what.set(what);
        g.width.set(width);
    } else if !same(g.what.get(), what) || g.width.get() != width {
        panic!(
            "mismatched {} collective: this thread is at {what} ({width} words), others at {} ({} words)",
            group.noun().0,
            g.what.get(),
            g.width.get()
        );
    }
    {
        let mut w = g.words[set].borrow_mut();
        let mut s = g.stamps[set].borrow_mut();
        let need = g.members as usize * width;
        if w.len() < need {
            w.resize(need, 0);
        }
        if s.len() < g.members as usize {
            s.resize(g.members as usize, 0);
        }
        w[member as usize * width..][..width].copy_from_slice(words);
        s[member as usize] = seq + 1;
    }
    if !g.gate.arrive(c.gid, block.queue()) {
        c.suspend(Suspend::Blocked);
    }
    f(&Exchange {
        what,
        group,
        member,
        members: g.members,
        width,
        stamp: seq + 1,
        words: g.words[set].borrow(),
        stamps: g.stamps[set].borrow(),
        result: &g.results[set],
        shared: block.shared.window(),
    })
}

/// Whether two collective names are the same (by address first: usually the same literal).
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}
