//! AMX tiles on stable Rust: detection, the operating system's permission, and the tile
//! configuration, shared by the AMX kernels ([`crate::matmul`]'s products and conv2d's direct
//! passes).
//!
//! Rust's AMX intrinsics are unstable, so the kernels write the instructions with `asm!`.
//! Linux hands a process the tile registers only after it asks (`arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once for all its threads.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 and the operating system granted the tiles (the packing
/// beside the kernels also needs AVX512-BF16, which every AMX CPU has).
pub(crate) fn available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        cpu_has_amx_bf16() && crate::matmul::avx512bf16::available() && request_tiles()
    })
}

/// CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
fn cpu_has_amx_bf16() -> bool {
    // Leaf 7 is read only where leaf 0 says it exists.
    __cpuid(0).eax >= 7 && {
        let edx = __cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }
}

/// Asks Linux for the tile data state for this process; false where it refuses (an older
/// kernel) or elsewhere.
fn request_tiles() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission; it changes nothing else about the process.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        granted == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// `ldtilecfg`'s operand, palette 1: the rows and bytes per row of each of the 8 tiles.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Every tile unused.
    pub const fn new() -> Self {
        Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        }
    }

    /// Tile `t` of `rows` rows (at most 16) of `bytes` bytes (at most 64).
    pub const fn tile(mut self, t: usize, rows: usize, bytes: usize) -> Self {
        assert!(t < 8 && rows <= 16 && bytes <= 64);
        self.rows[t] = rows as u8;
        self.bytes_per_row[t] = bytes as u16;
        self
    }
}

/// Runs `f`, whose kernels use the tiles, with `config` loaded on this thread; the tiles are
/// released after (also when `f` panics).
///
/// # Panics
/// Where AMX is not [`available`].
pub(crate) fn with_tiles<R>(config: &TileConfig, f: impl FnOnce() -> R) -> R {
    assert!(available(), "the CPU or the operating system lacks AMX");
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: AMX is available (asserted above); releasing returns the tiles to
            // their initial state and touches nothing else.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
    // SAFETY: AMX is available, and `config` is a palette-1 configuration whose tiles are
    // within the palette's limits (checked in `TileConfig::tile`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly)) };
    let _release = Release;
    f()
}
