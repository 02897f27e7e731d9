//! Shared memory: each block's static (`shared_array!`) and dynamic arrays, poisoned at the start
//! of every block, bounds-checked on every access. A block's threads all run on one OS thread,
//! so the words are plain `Cell`s: no atomics.
//!
//! Every array also has a shared-window address (bytes; dynamic memory first, then the static
//! arrays in first-use order, each 16-byte aligned), so code that addresses shared memory by
//! number, as `wgmma` descriptors and TMA/bulk copies do, can reach it through [`SharedWindow`].

use super::MAX_SHARED_BYTES_PER_BLOCK;
use super::block::ctx;
use super::cluster::{is_mapped, resolve};
use crate::device::types::SharedWord;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

const POISON_WORD: u32 = u32::MAX;

/// One array of a block's shared memory.
struct Region {
    /// Shared-window byte address of word 0.
    addr: u32,
    words: Box<[Cell<u32>]>,
}

/// A block's shared memory. Regions are allocated once per driver and launch and re-poisoned
/// for every block; they never move while a block runs, so `Shared` handles can point in.
pub(super) struct SharedMem {
    /// Region 0 is the dynamic shared memory (possibly empty); then the static arrays.
    regions: RefCell<Vec<Region>>,
    /// Static array id (see `StaticShared`) → region index.
    statics: RefCell<Vec<Option<usize>>>,
    bytes: Cell<usize>,
}

impl SharedMem {
    pub(super) fn new(dynamic_bytes: u32) -> Self {
        let words = dynamic_bytes as usize / 4;
        SharedMem {
            regions: RefCell::new(vec![Region {
                addr: 0,
                words: poisoned(words),
            }]),
            statics: RefCell::new(Vec::new()),
            bytes: Cell::new(words * 4),
        }
    }

    /// Every word back to poison, for the next block.
    pub(super) fn reset(&mut self) {
        for r in self.regions.get_mut() {
            for w in r.words.iter_mut() {
                *w.get_mut() = POISON_WORD;
            }
        }
    }

    pub(super) fn window(&self) -> SharedWindow {
        SharedWindow { mem: self }
    }

    fn handle<T>(&self, region: usize, len: usize) -> Shared<T> {
        let regions = self.regions.borrow();
        let r = &regions[region];
        Shared {
            mem: r.words.as_ptr(),
            len,
            addr: r.addr,
            _t: PhantomData,
        }
    }

    fn dynamic<T>(&self, len: usize) -> Shared<T> {
        let have = self.regions.borrow()[0].words.len();
        if len > have {
            panic!(
                "kernel wants {} bytes of dynamic shared memory, the launch gave {}",
                len * 4,
                have * 4
            );
        }
        self.handle(0, len)
    }

    fn static_array<T>(&self, id: usize, len: usize) -> Shared<T> {
        if let Some(Some(region)) = self.statics.borrow().get(id) {
            return self.handle(*region, len);
        }
        let total = self.bytes.get() + len * 4;
        if total > MAX_SHARED_BYTES_PER_BLOCK {
            panic!("shared memory over the per-block limit: {total} bytes");
        }
        let region = {
            let mut regions = self.regions.borrow_mut();
            let last = regions.last().expect("region 0 is always there");
            let end = last.addr as usize + last.words.len() * 4;
            regions.push(Region {
                addr: end.next_multiple_of(16) as u32,
                words: poisoned(len),
            });
            regions.len() - 1
        };
        self.bytes.set(total);
        let mut statics = self.statics.borrow_mut();
        if statics.len() <= id {
            statics.resize(id + 1, None);
        }
        statics[id] = Some(region);
        self.handle(region, len)
    }
}

fn poisoned(words: usize) -> Box<[Cell<u32>]> {
    (0..words).map(|_| Cell::new(POISON_WORD)).collect()
}

/// A block's shared memory addressed by shared-window byte address (what `Shared::addr`
/// returns), for emulated instructions that take shared-memory addresses: `wgmma` operand
/// descriptors, bulk and TMA copies, `mbarrier` objects. Valid while its block runs. A
/// cluster-mapped address (`map_shared_to_rank`) reaches that block's memory instead.
#[derive(Clone, Copy)]
pub struct SharedWindow {
    mem: *const SharedMem,
}

impl SharedWindow {
    /// The memory `addr` is in, and its offset there.
    fn target(self, addr: u32) -> (&'static SharedMem, u32) {
        if is_mapped(addr) {
            let (block, offset, _) = resolve(addr);
            return (&block.shared, offset);
        }
        // SAFETY: handed out by a live block's `SharedMem`, used while that block runs.
        (unsafe { &*self.mem }, addr)
    }
    fn word<R>(self, addr: u32, what: &str, f: impl FnOnce(&Cell<u32>) -> R) -> R {
        let (mem, addr) = self.target(addr);
        let regions = mem.regions.borrow();
        let found = regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.addr)? as usize;
            (off / 4 < r.words.len()).then(|| &r.words[off / 4])
        });
        match found {
            Some(w) if addr.is_multiple_of(4) => f(w),
            Some(_) => panic!("misaligned shared-window {what} at address {addr:#x}"),
            None => {
                panic!("shared-window {what} at address {addr:#x} is outside every shared array")
            }
        }
    }
    /// Whether `bytes` bytes from `addr` lie inside one shared array (the dynamic one, or a
    /// static one): what an instruction that reads or writes a range checks first.
    pub fn contains(self, addr: u32, bytes: u32) -> bool {
        let (mem, addr) = self.target(addr);
        let regions = mem.regions.borrow();
        regions.iter().any(|r| {
            addr.checked_sub(r.addr)
                .is_some_and(|off| off as u64 + bytes as u64 <= r.words.len() as u64 * 4)
        })
    }
    /// The words `out.len()` long from byte address `addr` (a multiple of 4), all in one
    /// shared array: one lookup for a whole 16-byte chunk or row, as bulk readers want.
    pub fn read(self, addr: u32, out: &mut [u32]) {
        self.range(addr, out.len(), "read", |ws| {
            for (o, w) in out.iter_mut().zip(ws) {
                *o = w.get();
            }
        })
    }
    /// Writes `words` from byte address `addr` (a multiple of 4), all in one shared array.
    pub fn write(self, addr: u32, words: &[u32]) {
        self.range(addr, words.len(), "write", |ws| {
            for (w, v) in ws.iter().zip(words) {
                w.set(*v);
            }
        })
    }
    fn range<R>(self, addr: u32, len: usize, what: &str, f: impl FnOnce(&[Cell<u32>]) -> R) -> R {
        let (mem, addr) = self.target(addr);
        let regions = mem.regions.borrow();
        let found = regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.addr)? as usize;
            (off / 4 + len <= r.words.len()).then(|| &r.words[off / 4..off / 4 + len])
        });
        match found {
            Some(ws) if addr.is_multiple_of(4) => f(ws),
            Some(_) => panic!("misaligned shared-window {what} at address {addr:#x}"),
            None => panic!(
                "shared-window {what} of {} bytes at {addr:#x} is not inside one shared array",
                4 * len
            ),
        }
    }
    /// The 32-bit word at byte address `addr` (a multiple of 4 inside some array).
    pub fn load(self, addr: u32) -> u32 {
        self.word(addr, "read", |w| w.get())
    }
    /// Writes the 32-bit word at byte address `addr`.
    pub fn store(self, addr: u32, v: u32) {
        self.word(addr, "write", |w| w.set(v))
    }
}

/// The shared-window address of the block's dynamic shared memory (0: it comes first, before
/// the static arrays), as `dynamic_shared_address` reads `kiln_dyn_smem` on the GPU.
pub fn dynamic_shared_address() -> u32 {
    ctx().block().shared.regions.borrow()[0].addr
}

/// The running block's shared memory by address (see [`SharedWindow`]).
pub fn shared_window() -> SharedWindow {
    ctx().block().shared.window()
}

/// A view of one block's shared memory: `len` words starting at `mem`. A raw pointer keeps the
/// handle `Copy`, as on the device: the memory belongs to the block, which outlives its
/// threads, and a handle cannot escape a kernel invocation (it is neither `Send` nor `Sync`).
pub struct Shared<T> {
    mem: *const Cell<u32>,
    len: usize,
    addr: u32,
    _t: PhantomData<T>,
}
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

impl<T: SharedWord> Shared<T> {
    #[inline(always)]
    fn word(self, i: usize, what: &str) -> &'static Cell<u32> {
        if i >= self.len {
            out_of_bounds(what, i, self.len);
        }
        // SAFETY: in bounds (checked above) of a block's memory, alive while its kernel runs,
        // and only touched from the block's OS thread.
        unsafe { &*self.mem.add(i) }
    }
    #[inline(always)]
    pub fn load(self, i: usize) -> T {
        T::from_word(self.word(i, "read").get())
    }
    #[inline(always)]
    pub fn store(self, i: usize, v: T) {
        self.word(i, "write").set(v.to_word())
    }
    pub fn load4(self, i: usize) -> [T; 4] {
        if !i.is_multiple_of(4) {
            panic!("misaligned 16-byte shared read at element {i}");
        }
        std::array::from_fn(|k| self.load(i + k))
    }
    pub fn store2(self, i: usize, v: [T; 2]) {
        if !i.is_multiple_of(2) {
            panic!("misaligned 8-byte shared write at element {i}");
        }
        self.store(i, v[0]);
        self.store(i + 1, v[1]);
    }
    pub fn store4(self, i: usize, v: [T; 4]) {
        if !i.is_multiple_of(4) {
            panic!("misaligned 16-byte shared write at element {i}");
        }
        for (k, x) in v.into_iter().enumerate() {
            self.store(i + k, x);
        }
    }
    pub fn offset(self, offset: usize) -> Self {
        if offset > self.len {
            panic!("shared-memory offset {offset} past length {}", self.len);
        }
        Shared {
            // SAFETY: within (or one past) the array, checked above.
            mem: unsafe { self.mem.add(offset) },
            len: self.len - offset,
            addr: self.addr + 4 * offset as u32,
            _t: PhantomData,
        }
    }
    pub fn cast<U: SharedWord>(self) -> Shared<U> {
        Shared {
            mem: self.mem,
            len: self.len,
            addr: self.addr,
            _t: PhantomData,
        }
    }
    /// The shared-window byte address of element 0 (as on the GPU: for descriptors).
    pub fn addr(self) -> u32 {
        self.addr
    }
}

#[cold]
#[inline(never)]
fn out_of_bounds(what: &str, i: usize, len: usize) -> ! {
    panic!("out-of-bounds {what} of shared memory: index {i}, length {len}")
}

/// One `shared_array!` declaration (a `static` inside the function the macro defines): gets a
/// small id on first use, by which each block finds its copy of the array.
pub struct StaticShared {
    name: &'static str,
    id: AtomicU32,
}

static NEXT_STATIC_ID: AtomicU32 = AtomicU32::new(0);
const NO_ID: u32 = u32::MAX;

impl StaticShared {
    #[doc(hidden)]
    pub const fn new(name: &'static str) -> Self {
        StaticShared {
            name,
            id: AtomicU32::new(NO_ID),
        }
    }
    /// The array's name, `module::path::name`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    fn id(&self) -> usize {
        let id = self.id.load(Ordering::Relaxed);
        if id != NO_ID {
            return id as usize;
        }
        let fresh = NEXT_STATIC_ID.fetch_add(1, Ordering::Relaxed);
        match self
            .id
            .compare_exchange(NO_ID, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh as usize,
            Err(won) => won as usize,
        }
    }
}

/// The running block's copy of the static array `site` (`len` words), created poisoned on first
/// use. The sum of a block's static and dynamic shared memory is checked against sm_90's limit.
#[doc(hidden)]
pub fn static_shared<T: SharedWord>(site: &StaticShared, len: usize) -> Shared<T> {
    ctx().block().shared.static_array(site.id(), len)
}

/// The block's dynamic shared memory as `len` elements; `len` must fit the launch's size.
pub fn dynamic_shared<T: SharedWord>(len: usize) -> Shared<T> {
    ctx().block().shared.dynamic(len)
}

/// The emulator's half of `shared_array!` (the nvptx backend has its own): nothing to
/// `declare`; the `handle` is looked up in the running block by a static per declaration.
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_static_shared {
    (declare $name:ident, $n:expr) => {};
    (handle $name:ident, $t:ty, $n:expr) => {{
        static SITE: $crate::device::emu::StaticShared = $crate::device::emu::StaticShared::new(
            concat!(module_path!(), "::", stringify!($name)),
        );
        $crate::device::emu::static_shared::<$t>(&SITE, $n)
    }};
}
