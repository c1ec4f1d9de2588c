//! The bf16 micro-kernel on AMX tiles: `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a
//! 32 x 16 one (stored as 16 rows of pairs) into a 16 x 16 f32 tile, 8,192 multiply-adds per
//! instruction.
//!
//! Rust's AMX intrinsics are unstable, so the instructions are written with `asm!`. Linux hands
//! a process the tile registers only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`), once for all its threads.

use super::MicroKernel;
use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 and the operating system granted the tiles (the packing
/// beside it also needs AVX512-BF16, which every AMX CPU has).
pub(crate) fn available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| cpu_has_amx_bf16() && super::avx512bf16::available() && request_tiles())
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

/// 16 rows times 64 columns: four accumulator tiles (`tmm0`-`tmm3`) side by side, one tile of
/// the row block (`tmm4`) shared by four panel tiles (`tmm5`-`tmm7`, one reused).
pub(crate) struct Kernel;

const MR: usize = 16;
const NR: usize = 64;
/// bf16 values in one tile row (64 bytes).
const KC: usize = 32;

/// `ldtilecfg`'s operand, palette 1: every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

impl MicroKernel for Kernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = KC;

    fn session<R>(f: impl FnOnce() -> R) -> R {
        struct Release;
        impl Drop for Release {
            fn drop(&mut self) {
                // SAFETY: AMX is available (the session only runs inside `matmul`'s kernels,
                // which checked); releasing the tiles only returns them to their initial state.
                unsafe { asm!("tilerelease", options(nostack, nomem)) };
            }
        }
        // SAFETY: as above; the configuration is a valid palette-1 layout.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        let _release = Release;
        f()
    }

    unsafe fn block(a: &[u16], b: &[u16], kp: usize, c: &mut [f32]) {
        debug_assert!(a.len() >= MR * kp && b.len() >= kp * NR && c.len() >= MR * NR);
        debug_assert_eq!(kp % KC, 0);
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for step in 0..kp / KC {
            // The row block's tile: 16 rows of 32 values, a block row (kp values) apart. The
            // panel's four tiles: 16 rows of pairs, a panel row (NR pairs, 256 bytes) apart,
            // 64 bytes (16 columns) from each other.
            let at = a.add(step * KC);
            let bt = b.add(step * (KC / 2) * NR * 2);
            asm!(
                "tileloadd tmm4, [{a} + {sa} * 1]",
                "tileloadd tmm5, [{b} + {sb} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{b} + {sb} * 1 + 64]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{b} + {sb} * 1 + 128]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{b} + {sb} * 1 + 192]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                a = in(reg) at,
                b = in(reg) bt,
                sa = in(reg) kp * 2,
                sb = in(reg) NR * 4,
                options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c} + {sc} * 1], tmm0",
            "tilestored [{c} + {sc} * 1 + 64], tmm1",
            "tilestored [{c} + {sc} * 1 + 128], tmm2",
            "tilestored [{c} + {sc} * 1 + 192], tmm3",
            c = in(reg) c,
            sc = in(reg) NR * 4,
            options(nostack)
        );
    }
}
