//! f16 / bf16 ↔ f32 conversions. Storage types are `u16` bit patterns, so the same code compiles
//! on stable (host) and nvptx, where `f16` would need a nightly feature.

/// bf16 → f32 is exact: the bf16 bits are the top half of the f32.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16, round to nearest even, as `cvt.rn.bf16.f32` (one instruction on the device). A
/// NaN becomes the canonical NaN `0x7fff`, as the hardware makes it, so the emulator and the
/// device round every value to the same bits.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u16;
        // SAFETY: a pure register conversion.
        unsafe { core::arch::asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) r, in(reg32) x) };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let b = x.to_bits();
        if (b & 0x7fff_ffff) > 0x7f80_0000 {
            return 0x7fff;
        }
        let rounding = 0x7fff + ((b >> 16) & 1);
        (b.wrapping_add(rounding) >> 16) as u16
    }
}

/// `w` as three bf16 parts `[lo, mid, hi]` whose exact sum is `w`: `hi` is `w` rounded to
/// bf16, `mid` the rest rounded, `lo` what is left. Each subtraction is exact (Sterbenz: a
/// value minus its own rounding), and each rounding leaves at most 8 significant bits of the
/// 24, so `lo` holds the last 8 exactly. Exceptions: a non-finite `w` is `hi` alone (NaN stays
/// NaN, ±inf stays ±inf; `mid = lo = 0`); a finite `w` past the largest bf16 (which would round
/// to infinity) takes the largest bf16 as `hi`, truncating, so the rest stays finite and exact;
/// below about 2^-110 `lo` falls under bf16's subnormal grid (2^-133) and is rounded there, an
/// error under 2^-134. Smallest part first: the router adds its partial logits in that order.
#[inline(always)]
pub fn split_bf16x3(w: f32) -> [u16; 3] {
    if !w.is_finite() {
        return [0, 0, f32_to_bf16(w)];
    }
    let mut hi = f32_to_bf16(w);
    if hi & 0x7fff == 0x7f80 {
        // ±inf from a finite value: ±the largest finite bf16 (0x7f7f, 0xff7f) instead.
        hi -= 1;
    }
    let rest = w - bf16_to_f32(hi);
    let mid = f32_to_bf16(rest);
    let lo = f32_to_bf16(rest - bf16_to_f32(mid));
    [lo, mid, hi]
}

/// Two f32 → two bf16 packed in a `u32`, `lo` in bits 0–15 (the order of two adjacent bf16 in
/// memory, and of a tensor-core register pair), rounded as [`f32_to_bf16`]: one
/// `cvt.rn.bf16x2.f32` on the device.
#[inline(always)]
pub fn pack_bf16x2(lo: f32, hi: f32) -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: a pure register conversion (the first source lands in the upper half).
        unsafe {
            core::arch::asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) r, in(reg32) hi, in(reg32) lo)
        };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        f32_to_bf16(lo) as u32 | (f32_to_bf16(hi) as u32) << 16
    }
}

/// Two bf16 packed in a `u32` (`lo` in bits 0–15, as [`pack_bf16x2`] makes them and as two
/// adjacent bf16 load from memory) → `[lo, hi]` as f32, exactly: a shift and a mask.
#[inline(always)]
pub fn unpack_bf16x2(pair: u32) -> [f32; 2] {
    [
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xffff_0000),
    ]
}

/// IEEE half → f32 (exact).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: f32;
        // SAFETY: a pure register conversion.
        unsafe { core::arch::asm!("cvt.f32.f16 {0}, {1};", out(reg32) r, in(reg16) h) };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let sign = ((h as u32) & 0x8000) << 16;
        let exp = ((h >> 10) & 0x1f) as u32;
        let mant = (h & 0x3ff) as u32;
        let bits = match (exp, mant) {
            (0, 0) => sign,
            (0, m) => {
                // Subnormal half: value m·2^-24; normalise into an f32.
                let shift = m.leading_zeros() - 21; // bring the leading 1 to bit 10
                let m = (m << shift) & 0x3ff;
                sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
            }
            (0x1f, 0) => sign | 0x7f80_0000,
            (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
            (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
        };
        f32::from_bits(bits)
    }
}

/// f32 → IEEE half, round to nearest even (overflow → ±inf).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u16;
        // SAFETY: a pure register conversion.
        unsafe { core::arch::asm!("cvt.rn.f16.f32 {0}, {1};", out(reg16) r, in(reg32) x) };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let abs = b & 0x7fff_ffff;
        if abs > 0x7f80_0000 {
            return sign | 0x7e00;
        }
        if abs >= 0x4780_0000 {
            return sign | 0x7c00; // ≥ 65536 or inf (65520..65536 round up to inf below too)
        }
        let exp = (abs >> 23) as i32 - 127;
        if exp < -25 {
            return sign; // below half the smallest subnormal: rounds to zero
        }
        let (mant, shift) = if exp < -14 {
            // Subnormal result: shift the full significand (with its implicit 1) into place.
            ((abs & 0x7f_ffff) | 0x80_0000, (-14 - exp + 13) as u32)
        } else {
            (abs & 0x7f_ffff, 13)
        };
        let half_exp = if exp < -14 {
            0
        } else {
            ((exp + 15) as u32) << 10
        };
        let kept = mant >> shift;
        let rest = mant & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let mut r = half_exp + kept;
        if rest > halfway || (rest == halfway && (kept & 1) == 1) {
            r += 1; // may carry into the exponent, which is the correct rounding (incl. to inf)
        }
        sign | r as u16
    }
}
