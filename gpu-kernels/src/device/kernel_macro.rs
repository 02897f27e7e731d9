//! `kernel!`: the one way to declare a kernel entry point.
//!
//! On nvptx the function becomes `#[no_mangle] extern "ptx-kernel"` (a `.visible .entry` in the
//! PTX); on the host it stays a plain function that the emulator calls once per thread.
//! Entry points must be monomorphic: write a generic body and one `kernel!` per instance.
//! The root `build.rs` scans for `kernel!` blocks to learn which entries the PTX must contain,
//! so keep the `pub fn NAME(` on the first line after any doc comments.

#[macro_export]
macro_rules! kernel {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[cfg(target_arch = "nvptx64")]
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name($($arg: $ty),*) $body

        $(#[$meta])*
        #[cfg(not(target_arch = "nvptx64"))]
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) $body
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
