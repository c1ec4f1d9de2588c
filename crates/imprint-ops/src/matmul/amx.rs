//! The bf16 micro-kernel on AMX tiles (see [`crate::amx`]): `tdpbf16ps` multiplies a 16 x 32
//! bf16 tile by a 32 x 16 one (stored as 16 rows of pairs) into a 16 x 16 f32 tile, 8,192
//! multiply-adds per instruction.

use super::MicroKernel;
use crate::amx::{with_tiles, TileConfig};
use std::arch::asm;

pub(crate) use crate::amx::available;

/// 16 rows times 64 columns: four accumulator tiles (`tmm0`-`tmm3`) side by side, one tile of
/// the row block (`tmm4`) shared by four panel tiles (`tmm5`-`tmm7`, one reused).
pub(crate) struct Kernel;

const MR: usize = 16;
const NR: usize = 64;
/// bf16 values in one tile row (64 bytes).
const KC: usize = 32;

/// Every tile 16 rows of 64 bytes.
const CONFIG: TileConfig = {
    let mut config = TileConfig::new();
    let mut t = 0;
    while t < 8 {
        config = config.tile(t, 16, 64);
        t += 1;
    }
    config
};

impl MicroKernel for Kernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = KC;

    fn session<R>(f: impl FnOnce() -> R) -> R {
        with_tiles(&CONFIG, f)
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
