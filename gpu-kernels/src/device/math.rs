//! Math that lowers correctly on NVPTX. libm-backed intrinsics (`expf32`, `sinf32`, …) abort
//! LLVM's NVPTX instruction selection, so everything here is built from `ex2`, `lg2`, `sqrt`,
//! `rsqrt`, `sin`/`cos` (approximate, accurate on [-π, π]) and `fma`. The host versions use the
//! standard library's correctly rounded or near-correct functions.

#[cfg(target_arch = "nvptx64")]
#[allow(improper_ctypes)]
unsafe extern "C" {
    #[link_name = "llvm.nvvm.ex2.approx.ftz.f"]
    fn nvvm_ex2_ftz(x: f32) -> f32;
    #[link_name = "llvm.nvvm.lg2.approx.f"]
    fn nvvm_lg2(x: f32) -> f32;
    #[link_name = "llvm.nvvm.rsqrt.approx.f"]
    fn nvvm_rsqrt(x: f32) -> f32;
    #[link_name = "llvm.nvvm.sin.approx.f"]
    fn nvvm_sin(x: f32) -> f32;
    #[link_name = "llvm.nvvm.cos.approx.f"]
    fn nvvm_cos(x: f32) -> f32;
}

/// `a * b + c` with one rounding (`fma.rn.f32`); Rust never fuses on its own.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        core::intrinsics::fmaf32(a, b, c)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        a.mul_add(b, c)
    }
}

/// 2^x (`ex2.approx.ftz.f32`, max relative error 2^-22), with results below 2^-126 flushed to
/// 0: one MUFU instruction, where the non-flushing form adds a range check and two multiplies
/// around it (softmax probabilities that small are zero in bf16 anyway).
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        // SAFETY: a pure arithmetic intrinsic.
        unsafe { nvvm_ex2_ftz(x) }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let y = x.exp2();
        if y < f32::MIN_POSITIVE { 0.0 } else { y }
    }
}

/// e^x as 2^(x·log2 e).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp2(x * core::f32::consts::LOG2_E)
}

/// log2(x) (`lg2.approx.f32`).
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        // SAFETY: a pure arithmetic intrinsic.
        unsafe { nvvm_lg2(x) }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.log2()
    }
}

/// Correctly rounded square root (`sqrt.rn.f32`).
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        core::intrinsics::sqrtf32(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.sqrt()
    }
}

/// 1/√x (`rsqrt.approx.f32`, relative error ~2^-23).
#[inline(always)]
pub fn rsqrt(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        // SAFETY: a pure arithmetic intrinsic.
        unsafe { nvvm_rsqrt(x) }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        1.0 / x.sqrt()
    }
}

/// IEEE maxNum (a NaN operand yields the other): `max.f32`, one instruction, where a compare
/// and select takes two.
#[inline(always)]
pub fn max(a: f32, b: f32) -> f32 {
    a.max(b)
}

/// IEEE minNum, as [`max`].
#[inline(always)]
pub fn min(a: f32, b: f32) -> f32 {
    a.min(b)
}

/// sin and cos of any finite angle. The hardware approximations are only accurate near
/// [-π, π], and RoPE angles reach 1e5 rad, so the angle is first reduced by 2π in a Cody–Waite
/// split (2π = C1 + C2 + C3: C1 has 8 significant bits, so k·C1 and x − k·C1 are
/// exact, and the fma steps round once each): reduced-angle error ≤ 2.4e-7 for |x| ≤ 1.2e5
/// (checked in float64 over 20 000 random angles).
#[inline(always)]
pub fn sincos(x: f32) -> (f32, f32) {
    const INV_TAU: f32 = 0.159_154_94;
    const C1: f32 = 6.281_25;
    const C2: f32 = 1.935_307_2e-3; // f32(2π − C1)
    const C3: f32 = 1.025_337_6e-11; // f32(2π − C1 − C2)
    let k = round_half_even(x * INV_TAU);
    let r = fma(-k, C3, fma(-k, C2, fma(-k, C1, x)));
    sincos_reduced(r)
}

#[inline(always)]
fn sincos_reduced(r: f32) -> (f32, f32) {
    #[cfg(target_arch = "nvptx64")]
    {
        // SAFETY: pure arithmetic intrinsics on a reduced argument.
        unsafe { (nvvm_sin(r), nvvm_cos(r)) }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        (r.sin(), r.cos())
    }
}

/// Round to nearest integer (ties to even), as `cvt.rni` does; valid for |x| < 2^22.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + MAGIC) - MAGIC
}

/// x / (1 + e^-x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}
