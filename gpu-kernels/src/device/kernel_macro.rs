//! `kernel!`: the one way to declare a kernel entry point.
//!
//! On nvptx the function becomes `#[no_mangle] extern "ptx-kernel"` (a `.visible .entry` in the
//! PTX). On the host it stays a plain function that the emulator calls once per thread, and a
//! module of the same name carries what the host needs to launch it (see `device::entry`):
//! `NAME::ENTRY` (entry name and parameter list, registered for the root `build.rs` and the
//! CUDA loader) and `NAME::launch(launcher, config, args...)`, one typed call for both backends.
//! Any number of parameters works. Entry points must be monomorphic: write a generic body and
//! one `kernel!` per instance.

/// `kernel! { threads = N; pub fn ... }` declares that the kernel only runs in blocks of
/// exactly `N` threads: `build.rs` gives its PTX entry `.maxntid N, 1, 1` (which `ptxas` needs
/// before it honours `setmaxnreg`: see `device::lower_registers`), and a launch with any other
/// block size is refused with an error on both backends.
///
/// `kernel! { threads = N; cluster = C; pub fn ... }` also declares that its blocks run in
/// thread-block clusters of `C` consecutive blocks along x (Hopper): `build.rs` gives the entry
/// `.reqnctapercluster C, 1, 1`, so a plain launch forms the clusters; a grid whose x is not a
/// multiple of `C` is refused on both backends, and the emulator runs each cluster's blocks
/// together (see `device::cluster`). A cluster size goes only with a block size: one form
/// keeps `build.rs` simple, and a kernel that shares work across blocks has fixed roles anyway.
#[macro_export]
macro_rules! kernel {
    (threads = $threads:expr; cluster = $cluster:expr; $(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $crate::kernel!(@entry Some($threads), Some($cluster); $(#[$meta])* pub fn $name($($arg: $ty),*) $body);
    };
    (threads = $threads:expr; $(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $crate::kernel!(@entry Some($threads), None; $(#[$meta])* pub fn $name($($arg: $ty),*) $body);
    };
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $crate::kernel!(@entry None, None; $(#[$meta])* pub fn $name($($arg: $ty),*) $body);
    };
    (@entry $threads:expr, $cluster:expr; $(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[cfg(target_arch = "nvptx64")]
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name($($arg: $ty),*) {
            // Before anything reads what the previous kernel wrote (see the function's doc).
            $crate::device::grid_dependency_wait();
            $body
        }

        $(#[$meta])*
        #[cfg(not(target_arch = "nvptx64"))]
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) $body

        #[cfg(not(target_arch = "nvptx64"))]
        #[doc = concat!("Host side of the `", stringify!($name), "` kernel: its entry and launcher.")]
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// The PTX entry and its parameters, as declared (registered for the host).
            pub const ENTRY: $crate::device::entry::Entry = $crate::device::entry::Entry {
                name: stringify!($name),
                file: file!(),
                line: line!(),
                threads: $threads,
                cluster: $cluster,
                params: &[$((
                    stringify!($arg),
                    <$ty as $crate::device::entry::Param>::KIND,
                )),*],
            };

            $crate::device::entry::inventory::submit! { ENTRY }

            #[doc = concat!("Launches `", stringify!($name), "` with `config` on `launcher`'s \
                backend. Each argument must convert to its parameter's type (`Arg`): checked \
                at compile time, for both backends.")]
            #[allow(clippy::too_many_arguments)]
            pub fn launch<L: $crate::device::entry::Launcher>(
                launcher: &L,
                config: L::Config,
                $($arg: impl $crate::device::entry::Arg<L, $ty>),*
            ) -> ::core::result::Result<(), L::Error> {
                if launcher.is_emulator() {
                    $(let $arg = $crate::device::entry::Arg::<L, $ty>::emulated(&$arg, launcher)?;)*
                    launcher.launch_emulated(&ENTRY, config, &move || super::$name($($arg),*))
                } else {
                    let params: &[u64] =
                        &[$($crate::device::entry::Arg::<L, $ty>::cuda(&$arg, launcher)?),*];
                    launcher.launch_cuda(&ENTRY, config, params)
                }
            }
        }
    };
}

/// Declares a statically sized shared-memory array and a function returning a handle to it:
/// `shared_array!(fn tile() -> [f32; 1024]);`. The name must be unique within the crate (it is
/// a PTX symbol). Both backends provide the one constructor, `__kiln_static_shared!`, in two
/// parts: `declare` the storage (nvptx: a `.shared` variable; host: nothing) and make the
/// `handle` (host: the running block's own poisoned copy).
#[macro_export]
macro_rules! shared_array {
    (fn $name:ident() -> [$t:ty; $n:expr]) => {
        $crate::__kiln_static_shared!(declare $name, $n);

        #[inline(always)]
        fn $name() -> $crate::device::Shared<$t> {
            const _: () = assert!(core::mem::size_of::<$t>() == 4);
            $crate::__kiln_static_shared!(handle $name, $t, $n)
        }
    };
}
