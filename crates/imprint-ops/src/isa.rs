//! Which vector instructions the kernels may use.
//!
//! Every kernel with an AVX-512 form asks [`avx512`], so one variable turns AVX-512 off for the
//! whole process: on a machine that has it, the kernels then take the path a CPU without it
//! takes (im2col and gemm products on FMA micro-kernels, loops at AVX2 width), to time that
//! path against PyTorch's `ATEN_CPU_CAPABILITY=avx2` on the same CPU.

use std::sync::OnceLock;

/// Set to anything but empty or `0`, the kernels leave AVX-512 aside.
pub const NO_AVX512_VAR: &str = "IMPRINT_NO_AVX512";

/// Whether `IMPRINT_NO_AVX512` asks the kernels to leave AVX-512 aside (read once per process).
pub fn avx512_switched_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os(NO_AVX512_VAR).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Whether the kernels use AVX-512F: the CPU has it and [`NO_AVX512_VAR`] does not turn it off.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && !avx512_switched_off()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX2 and FMA (x86 since Intel's Haswell and AMD's Zen), which the
/// kernels use where AVX-512 is absent or switched off.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
