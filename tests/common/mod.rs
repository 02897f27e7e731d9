//! Shared test helpers: which devices to run on, fresh random inputs, poisoned outputs, and
//! comparisons against float64 references.
#![allow(dead_code)]

use kiln::gpu::{Buffer, Device, Element};
use kiln::rng::Rng;
use std::sync::OnceLock;

/// The devices kernel tests run on, chosen by `KILN_TEST_DEVICE`:
/// unset or `emulator` → the CPU emulator (what CI runs); `cuda` → the GPU only; `all` → both.
/// Asking for `cuda` where no GPU works fails the test loudly rather than skipping it.
pub fn devices() -> Vec<Device> {
    let choice = std::env::var("KILN_TEST_DEVICE").unwrap_or_else(|_| "emulator".into());
    let cuda = || match Device::cuda() {
        Ok(d) => d,
        Err(e) => panic!("KILN_TEST_DEVICE={choice} asks for the GPU, but it is unusable: {e}"),
    };
    match choice.as_str() {
        "emulator" => vec![Device::emulator()],
        "cuda" => vec![cuda()],
        "all" => vec![Device::emulator(), cuda()],
        other => panic!("KILN_TEST_DEVICE={other}: expected emulator, cuda or all"),
    }
}

/// A fresh seed per test run (printed, and overridable with `KILN_TEST_SEED` to reproduce).
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("KILN_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("test seed: KILN_TEST_SEED={s}");
        s
    })
}

/// An RNG for one test case, distinct per `salt`.
pub fn rng(salt: u64) -> Rng {
    Rng::new(seed() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A device buffer of `len` elements filled with `poison` (so unwritten outputs show).
pub fn poisoned<T: Element>(dev: &Device, len: usize, poison: T) -> Buffer<T> {
    dev.upload(&vec![poison; len], "poisoned output")
        .expect("allocating a test buffer")
}

pub fn upload<T: Element>(dev: &Device, data: &[T]) -> Buffer<T> {
    dev.upload(data, "test input")
        .expect("uploading a test input")
}

/// ‖got − want‖ / ‖want‖ in f64; panics if any element is not finite (NaN poison left behind
/// or an overflow) or the lengths differ.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("element {i} is {} (unwritten or overflowed)", got[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w) * (*g as f64 - w);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Asserts `rel_l2(got, want) <= tol`, naming the case and device.
pub fn assert_close(case: &str, dev: &Device, got: &[f32], want: &[f64], tol: f64) {
    let err = rel_l2(got, want);
    assert!(
        err <= tol,
        "{case} on {}: rel L2 error {err:.3e} > {tol:.1e} (seed {})",
        dev.name(),
        seed()
    );
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The shared test fixtures (tiny GGUF models, reference logits): `KILN_FIXTURES` when set (the
/// GPU bundle points it inside itself), else `shared/fixtures` beside the repository.
pub fn fixtures_dir() -> std::path::PathBuf {
    match std::env::var_os("KILN_FIXTURES") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}
