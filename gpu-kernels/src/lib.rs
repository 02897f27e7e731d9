//! kiln's device kernels, one kernel family per file, over the small device API in [`device`].
//!
//! Every `src/NAME.rs` is the public module `NAME` (declared by `build.rs`: adding a kernel
//! family is adding its file). Each `kernel!` in it is a PTX entry point and, on the host, also
//! a module of the same name with the typed launcher (see [`device::entry`]).
//!
//! The same source compiles twice:
//! - for `nvptx64-nvidia-cuda` (pinned nightly, driven by the root `build.rs`): `no_std`, every
//!   `kernel!` becomes a `.visible .entry` in one PTX module;
//! - for the host (stable): the device API is emulated ([`device::emu`]) so kernel logic is
//!   unit-tested on the CPU with real barriers, poisoned shared memory and warp exchange.
#![cfg_attr(target_arch = "nvptx64", no_std)]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(
        abi_ptx,
        asm_experimental_arch,
        link_llvm_intrinsics,
        core_intrinsics,
        stdarch_nvptx
    )
)]
#![cfg_attr(target_arch = "nvptx64", allow(internal_features))]

#[macro_use]
pub mod device;

// `pub mod attention; pub mod convert; ...`: one module per file in src/.
include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));
