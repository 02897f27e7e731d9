//! Kernel entry points as the host sees them (host builds only): what `kernel!` emits beside
//! each kernel function, so the list of kernels, their signatures and their launchers all come
//! from the kernel source itself.
//!
//! For `kernel! { pub fn NAME(a: In<f32>, n: u32) { ... } }` the host build also gets a module
//! `NAME` (same name, other namespace) holding
//! - `NAME::ENTRY`, an [`Entry`]: the PTX entry name and the parameter list, registered in
//!   [`entries()`] (the root `build.rs` checks the PTX against that list; the host loads it);
//! - `NAME::launch(launcher, config, a, n)`: one typed call that launches the kernel on the
//!   launcher's backend. Each argument must implement [`Arg`] for its parameter's type, so an
//!   argument list that does not match the kernel's signature does not compile, on either
//!   backend: the CUDA parameters and the emulated call are built from the same arguments
//!   through the same per-parameter trait.
//!
//! The host (kiln's `gpu` module) implements [`Launcher`] for its device and [`Arg`] for its
//! buffer views. Both traits are `unsafe` to implement: a launch on a GPU dereferences whatever
//! addresses its parameters hold, unchecked.

use super::{In, Out};

#[doc(hidden)]
pub use inventory;

/// How a kernel parameter is passed, and the PTX parameter type rustc gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A global-memory pointer (`In<T>` / `Out<T>`): 8 bytes.
    Pointer,
    U32,
    I32,
    F32,
}

impl ParamKind {
    /// The type in the PTX entry's parameter list (`.param .u64 .ptr ...` for pointers).
    pub fn ptx_type(self) -> &'static str {
        match self {
            ParamKind::Pointer => ".u64",
            ParamKind::U32 | ParamKind::I32 => ".u32",
            ParamKind::F32 => ".f32",
        }
    }
}

/// Types a kernel may take as a parameter.
pub trait Param: Copy + Send + Sync {
    const KIND: ParamKind;
}

impl<T> Param for In<T> {
    const KIND: ParamKind = ParamKind::Pointer;
}
impl<T> Param for Out<T> {
    const KIND: ParamKind = ParamKind::Pointer;
}
impl Param for u32 {
    const KIND: ParamKind = ParamKind::U32;
}
impl Param for i32 {
    const KIND: ParamKind = ParamKind::I32;
}
impl Param for f32 {
    const KIND: ParamKind = ParamKind::F32;
}

/// One kernel entry point, as declared with `kernel!`.
#[derive(Debug)]
pub struct Entry {
    /// The PTX `.entry` name (the function's name).
    pub name: &'static str,
    /// Where it is declared (for error messages).
    pub file: &'static str,
    pub line: u32,
    /// The one block size the kernel is written for (`kernel! { threads = N; ... }`): the PTX
    /// entry carries `.maxntid N, 1, 1` and launches must use exactly `N` threads.
    pub threads: Option<u32>,
    /// Blocks per thread-block cluster (`kernel! { threads = N; cluster = C; ... }`): the PTX
    /// entry carries `.reqnctapercluster C, 1, 1`, and launches need a grid x that is a
    /// multiple of `C` (clusters are `C` consecutive blocks along x).
    pub cluster: Option<u32>,
    /// Parameter names and kinds, in order.
    pub params: &'static [(&'static str, ParamKind)],
}

inventory::collect!(Entry);

/// Blocks per cluster of the kernel named `name` (`kernel! { cluster = C; ... }`): 1 for a
/// kernel declared without one, or for a name no kernel has.
pub fn cluster_size(name: &str) -> u32 {
    inventory::iter::<Entry>
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.cluster)
        .unwrap_or(1)
}

/// Every kernel declared with `kernel!` in this crate, sorted by name.
pub fn entries() -> Vec<&'static Entry> {
    let mut all: Vec<&'static Entry> = inventory::iter::<Entry>.into_iter().collect();
    all.sort_by_key(|e| e.name);
    all
}

/// The host side of a launch: where `NAME::launch` sends the kernel.
///
/// # Safety
/// Launching reads and writes device memory at whatever addresses the parameters hold, with
/// no bounds checks on the GPU. An implementor promises that launches only reach the device
/// from code that has checked every buffer against the index range the kernel touches (kiln:
/// its `gpu::ops` wrappers, the only code that can make the pointer arguments).
pub unsafe trait Launcher {
    /// Grid, block and dynamic shared memory.
    type Config;
    type Error;
    /// Whether launches run on the CPU emulator (else `launch_cuda`).
    fn is_emulator(&self) -> bool;
    /// Launches `entry` on the GPU; `params[i]` is parameter `i` as the driver reads it (a
    /// device address, or a 32-bit value in the low bytes).
    fn launch_cuda(
        &self,
        entry: &'static Entry,
        config: Self::Config,
        params: &[u64],
    ) -> Result<(), Self::Error>;
    /// Runs `kernel` (the kernel function applied to its arguments) once per emulated thread.
    fn launch_emulated(
        &self,
        entry: &'static Entry,
        config: Self::Config,
        kernel: &(dyn Fn() + Sync),
    ) -> Result<(), Self::Error>;
}

/// A host value that can be passed as a kernel parameter of type `P` through launcher `L`.
///
/// # Safety
/// `cuda` must return what a parameter of type `P` means on the GPU (for pointers: the address
/// of a live device allocation of `L`'s device, for values: their bits), and `emulated` a `P`
/// whose memory stays valid for the launch.
pub unsafe trait Arg<L: Launcher + ?Sized, P: Param> {
    /// The parameter as the CUDA driver reads it.
    fn cuda(&self, launcher: &L) -> Result<u64, L::Error>;
    /// The parameter the emulator passes to the kernel function.
    fn emulated(&self, launcher: &L) -> Result<P, L::Error>;
}

// SAFETY (all three): a plain value's bits, in the low bytes of the slot.
unsafe impl<L: Launcher + ?Sized> Arg<L, u32> for u32 {
    fn cuda(&self, _: &L) -> Result<u64, L::Error> {
        Ok(u64::from(*self))
    }
    fn emulated(&self, _: &L) -> Result<u32, L::Error> {
        Ok(*self)
    }
}
unsafe impl<L: Launcher + ?Sized> Arg<L, i32> for i32 {
    fn cuda(&self, _: &L) -> Result<u64, L::Error> {
        Ok(u64::from(*self as u32))
    }
    fn emulated(&self, _: &L) -> Result<i32, L::Error> {
        Ok(*self)
    }
}
unsafe impl<L: Launcher + ?Sized> Arg<L, f32> for f32 {
    fn cuda(&self, _: &L) -> Result<u64, L::Error> {
        Ok(u64::from(self.to_bits()))
    }
    fn emulated(&self, _: &L) -> Result<f32, L::Error> {
        Ok(*self)
    }
}
