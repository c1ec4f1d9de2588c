//! The bf16 micro-kernel on AVX512-BF16: `vdpbf16ps` multiplies 16 pairs of bf16 and adds each
//! pair's sum to one of 16 f32 lanes, twice the multiply-adds of an f32 `vfmadd` per
//! instruction.

use super::MicroKernel;
use std::arch::x86_64::*;

/// Whether this CPU has AVX512-BF16 (and the AVX-512 foundation and byte-word instructions
/// the packing uses), and AVX-512 is not switched off (`IMPRINT_NO_AVX512`), which takes AMX
/// with it: a CPU without AVX-512 has neither.
pub(crate) fn available() -> bool {
    crate::isa::avx512()
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// 8 rows times 32 columns (2 vectors): 16 sums, 2 panel vectors and a broadcast stay in
/// registers, 16 `vdpbf16ps` for 10 loads per pair of inner steps.
pub(crate) struct Kernel;

const MR: usize = 8;
const NR: usize = 32;

impl MicroKernel for Kernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 2;

    fn session<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    unsafe fn block(a: &[u16], b: &[u16], kp: usize, c: &mut [f32]) {
        debug_assert!(a.len() >= MR * kp && b.len() >= kp * NR && c.len() >= MR * NR);
        block(a.as_ptr(), b.as_ptr(), kp, c.as_mut_ptr())
    }
}

/// # Safety
/// AVX512-BF16, and the sizes of [`MicroKernel::block`].
#[target_feature(enable = "avx512f,avx512bf16")]
// The indices address two register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn block(a: *const u16, b: *const u16, kp: usize, c: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for r in 0..kp / 2 {
        let panel = b.add(r * NR * 2);
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(32).cast()));
        for i in 0..MR {
            let pair = a.add(i * kp + 2 * r).cast::<i32>().read_unaligned();
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        }
    }
    for i in 0..MR {
        _mm512_storeu_ps(c.add(i * NR), acc[i][0]);
        _mm512_storeu_ps(c.add(i * NR + 16), acc[i][1]);
    }
}

/// Lanes `0..len` of a vector of 16.
fn mask16(len: usize) -> u16 {
    if len >= 16 {
        u16::MAX
    } else {
        (1u16 << len) - 1
    }
}

/// [`super::convert`]: `dst[i] = bf16(src[i])`, 32 at a time.
///
/// # Safety
/// AVX512-BF16 and AVX512-BW.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn convert(src: &[f32], dst: &mut [u16]) {
    let len = src.len().min(dst.len());
    let mut i = 0;
    while i < len {
        let (lo, hi) = ((len - i).min(16), (len - i).saturating_sub(16).min(16));
        let s = src.as_ptr().add(i);
        let a = _mm512_maskz_loadu_ps(mask16(lo), s);
        let b = _mm512_maskz_loadu_ps(mask16(hi), s.wrapping_add(16));
        // The first operand goes to the upper half.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        let mask = (mask16(hi) as u32) << 16 | mask16(lo) as u32;
        _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), mask, v);
        i += 32;
    }
}

/// [`super::interleave`]: `dst[2i] = bf16(even[i])`, `dst[2i + 1] = bf16(odd[i])`, 16 pairs
/// at a time.
///
/// # Safety
/// AVX512-BF16 and AVX512-BW.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn interleave(even: &[f32], odd: &[f32], dst: &mut [u16]) {
    let len = even.len().min(odd.len()).min(dst.len() / 2);
    // Lane 2i takes lane i (the even row, lower half), lane 2i + 1 lane 16 + i.
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let mut i = 0;
    while i < len {
        let n = (len - i).min(16);
        let e = _mm512_maskz_loadu_ps(mask16(n), even.as_ptr().add(i));
        let o = _mm512_maskz_loadu_ps(mask16(n), odd.as_ptr().add(i));
        let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(o, e));
        let pairs = _mm512_permutexvar_epi16(order, halves);
        let mask = if n == 16 {
            u32::MAX
        } else {
            (1u32 << (2 * n)) - 1
        };
        _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(2 * i).cast(), mask, pairs);
        i += 16;
    }
}
