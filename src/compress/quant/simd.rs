//! Runtime CPU-feature dispatch shared by the int8 and int4 kernels.
//!
//! Why this shape: the release binary targets baseline x86-64 (SSE2), where the quantize loops
//! run at ≈ 0.7–1 GB/s; compiled for AVX2 they reach ≈ 2 GB/s. Each kernel is written once as an
//! `#[inline(always)]` generic function with loops LLVM vectorises, and [`simd_dispatch!`]
//! instantiates it twice: inside an `#[target_feature(enable = "avx2,fma")]` function (picked at
//! run time when the CPU has both) and plainly (the fallback for other CPUs and arches). Rust never
//! contracts `a * b + c` into an FMA nor reassociates float ops, so both instances compute the
//! same IEEE operations in the same order and give bit-identical output (tested per kernel).
//! Called from whatever thread runs the kernel.

/// Whether the AVX2 + FMA instances may run on this CPU (the std macro caches the answer).
#[inline]
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 1.5 · 2²³: adding it to an f32 `v` with |v| < 2²² rounds `v` to an integer (ties to even, the
/// default FP rounding mode) and leaves that integer, in two's complement, in the low mantissa
/// bits. Cheaper than `round_ties_even` + a saturating cast, and vectorises on plain SSE2.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// `round_ties_even(v)` as an i8, for |v| ≤ 128 (callers clamp first).
#[inline(always)]
pub(crate) fn round_i8(v: f32) -> i8 {
    (v + ROUND_MAGIC).to_bits() as u8 as i8
}

/// `round_ties_even(v)` as a u8, for 0 ≤ v ≤ 255 (callers clamp first).
#[inline(always)]
pub(crate) fn round_u8(v: f32) -> u8 {
    (v + ROUND_MAGIC).to_bits() as u8
}

/// Defines `fn $name(simd: bool, args…) -> ret` that runs `$generic(args…)` compiled for
/// AVX2 + FMA when `simd` is true and the CPU has both, and the baseline build otherwise.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $generic:path;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments, clippy::unused_unit)]
        $vis fn $name(simd: bool, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments, clippy::unused_unit)]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                if simd && super::simd::avx2_available() {
                    // SAFETY: avx2 and fma were detected on this CPU just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            let _ = simd;
            $generic($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_is_ties_to_even() {
        for i in -2560..=2560 {
            let v = i as f32 / 20.0; // covers .5 ties and ±128
            let want = v.round_ties_even();
            assert_eq!(round_i8(v.clamp(-128.0, 127.0)) as f32, want.clamp(-128.0, 127.0));
        }
        for i in 0..=5100 {
            let v = i as f32 / 20.0;
            assert_eq!(round_u8(v) as f32, v.round_ties_even(), "{v}");
        }
        assert_eq!(round_i8(-0.0), 0);
        assert_eq!(round_i8(-0.5), 0);
        assert_eq!(round_i8(-1.5), -2);
    }
}
