//! Matrix products behind one trait, [`Matmul`], one implementation per kernel of
//! [`ProductKernel`]: f32 through the `gemm` crate, and bf16 inputs with f32 sums through a
//! packing driver ([`Bf16Gemm`]) over a micro-kernel ([`MicroKernel`]) per instruction set.
//! A new backend is a micro-kernel file and a variant of [`ProductKernel`].
//!
//! The bf16 driver rounds both operands to bf16 (to nearest, ties to even) while packing them
//! in the layouts the micro-kernels read: the left operand in row blocks of `MR` rows, the
//! right one in column panels of `NR` columns whose neighbouring rows are interleaved in pairs
//! (`[k / 2][NR][2]`, the layout `vdpbf16ps` and `tdpbf16ps` multiply), the inner dimension
//! padded with zeros. Every output element is one f32 sum over the whole inner dimension,
//! written (or added) once.

// AVX-512 intrinsics are stable from Rust 1.89, which the `gemm` dependency's AVX-512 kernels
// already require of this crate (see `crate::direct`).
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
pub(crate) mod avx512bf16;

use crate::cpu_util::{gemm, transpose, View};
use crate::precision::ProductKernel;
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::Cell;

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, on one kernel.
pub(crate) trait Matmul: Sync {
    /// `dst` is row-major `[m, n]`; `accumulate = false` overwrites it without reading it.
    /// Uses up to `threads` threads inside the product.
    fn product(&self, dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, threads: usize);
}

/// The products of `kernel`.
///
/// # Panics
/// When this CPU cannot run `kernel`.
pub(crate) fn matmul(kernel: ProductKernel) -> &'static dyn Matmul {
    assert!(kernel.available(), "this CPU cannot run {kernel}");
    match kernel {
        ProductKernel::F32 => &F32Gemm,
        #[cfg(target_arch = "x86_64")]
        ProductKernel::Avx512Bf16 => &Bf16Gemm::<avx512bf16::Kernel>(std::marker::PhantomData),
        #[cfg(target_arch = "x86_64")]
        ProductKernel::AmxBf16 => &Bf16Gemm::<amx::Kernel>(std::marker::PhantomData),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only f32 is available off x86-64"),
    }
}

/// f32 products by the `gemm` crate.
struct F32Gemm;

impl Matmul for F32Gemm {
    fn product(&self, dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, threads: usize) {
        gemm(dst, lhs, rhs, accumulate, threads)
    }
}

/// A bf16 micro-kernel: the `MR x NR` f32 sums of one packed row block of the left operand
/// times one packed column panel of the right one.
pub(crate) trait MicroKernel: Sync + 'static {
    /// Rows of a block.
    const MR: usize;
    /// Columns of a panel.
    const NR: usize;
    /// The inner dimension is padded with zeros to a multiple of this.
    const KC: usize;

    /// Runs `f`, which calls [`Self::block`], with the thread set up for it (AMX loads its
    /// tile configuration before and releases the tiles after).
    fn session<R>(f: impl FnOnce() -> R) -> R;

    /// `c[i * NR + j] = Σ_k a[i][k] · b[k][j]` over the padded inner dimension `kp`, `a` a row
    /// block packed row-major `[MR][kp]`, `b` a panel packed `[kp / 2][NR][2]`.
    ///
    /// # Safety
    /// Inside [`Self::session`] on a CPU that runs the kernel; `a` holds `MR * kp` values, `b`
    /// `kp * NR`, `c` `MR * NR`.
    unsafe fn block(a: &[u16], b: &[u16], kp: usize, c: &mut [f32]);
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits; NaN stays NaN.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
#[cfg(test)]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Below this many multiply-adds, one product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

thread_local! {
    /// The packed panel of the right operand a thread works on.
    static PANEL: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// bf16 products on the micro-kernel `K`.
pub(crate) struct Bf16Gemm<K>(std::marker::PhantomData<K>);

/// The destination's pointer, for threads that each write their own columns.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: shared only between the tasks of one product, which write disjoint columns.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// Sets or adds `s` at element `at`.
    ///
    /// # Safety
    /// `at` in bounds of the destination, and written by no other task.
    unsafe fn put(&self, at: usize, s: f32, accumulate: bool) {
        let d = self.0.add(at);
        *d = if accumulate { *d + s } else { s };
    }
}

/// A row-major `[rows, cols]` operand: a view's own data, or a transposed copy of it.
struct Rows<'a> {
    data: Cow<'a, [f32]>,
    rows: usize,
    cols: usize,
}

impl<'a> Rows<'a> {
    fn of(v: &View<'a>) -> Self {
        let (rows, cols) = (v.rows(), v.cols());
        let data = match v.is_transposed() {
            false => Cow::Borrowed(v.data()),
            true => {
                let mut t = vec![0.0; rows * cols];
                transpose(v.data(), cols, rows, &mut t);
                Cow::Owned(t)
            }
        };
        Self { data, rows, cols }
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

impl<K: MicroKernel> Matmul for Bf16Gemm<K> {
    fn product(&self, dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, threads: usize) {
        let (m, k, n) = (lhs.rows(), lhs.cols(), rhs.cols());
        assert_eq!(k, rhs.rows(), "inner dimensions differ");
        assert_eq!(dst.len(), m * n, "destination size");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                dst.fill(0.0);
            }
            return;
        }
        // The packing reads both operands along rows, so a transposed one is copied back
        // first. Where only the right one is transposed and the left is the smaller, the
        // transposed product `dstᵀ = rhsᵀ · lhsᵀ` copies the smaller instead.
        let (a, b, out) = if rhs.is_transposed() && !lhs.is_transposed() && m < n {
            (Rows::of(&rhs.t()), Rows::of(&lhs.t()), Out::Transposed)
        } else {
            (Rows::of(&lhs), Rows::of(&rhs), Out::RowMajor)
        };
        product::<K>(dst, &a, &b, out, accumulate, threads);
    }
}

/// How the sums land in the destination.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    /// `dst[i * n + j]` for the product's `(i, j)`.
    RowMajor,
    /// `dst[j * m + i]`: the destination holds the product's transpose.
    Transposed,
}

/// `dst (+)= a · b` (or its transpose, by `out`), both operands row-major.
fn product<K: MicroKernel>(
    dst: &mut [f32],
    a: &Rows,
    b: &Rows,
    out: Out,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let kp = k.next_multiple_of(K::KC);
    let blocks = m.div_ceil(K::MR);
    let mut packed = vec![0u16; blocks * K::MR * kp];
    for (blk, rows) in packed.chunks_exact_mut(K::MR * kp).enumerate() {
        pack_block::<K>(a, blk * K::MR, kp, rows);
    }
    let panels = n.div_ceil(K::NR);
    let tasks = if m * n * k >= PARALLEL_MIN_MACS {
        threads.clamp(1, panels)
    } else {
        1
    };
    let dst = Dst(dst.as_mut_ptr());
    let run = |task: usize| {
        let (first, last) = (task * panels / tasks, (task + 1) * panels / tasks);
        let mut panel = PANEL.with(Cell::take);
        panel.resize(kp * K::NR, 0);
        let mut c = vec![0.0f32; K::MR * K::NR];
        K::session(|| {
            for p in first..last {
                let n0 = p * K::NR;
                pack_panel::<K>(b, n0, kp, &mut panel);
                for (blk, block) in packed.chunks_exact(K::MR * kp).enumerate() {
                    // SAFETY: inside the session, on a CPU `matmul` checked; the buffers have
                    // the sizes `block` asks for.
                    unsafe { K::block(block, &panel, kp, &mut c) };
                    let m0 = blk * K::MR;
                    let (rows, cols) = ((m - m0).min(K::MR), (n - n0).min(K::NR));
                    for (i, sums) in c.chunks_exact(K::NR).take(rows).enumerate() {
                        for (j, &s) in sums[..cols].iter().enumerate() {
                            let at = match out {
                                Out::RowMajor => (m0 + i) * n + n0 + j,
                                Out::Transposed => (n0 + j) * m + m0 + i,
                            };
                            // SAFETY: `at` addresses product element `(m0 + i, n0 + j)` of
                            // the `m x n` destination, in a column only this task writes.
                            unsafe { dst.put(at, s, accumulate) };
                        }
                    }
                }
            }
        });
        PANEL.with(|slot| slot.set(panel));
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Packs rows `m0..m0 + MR` of `a` as bf16, row-major `[MR][kp]`, zeros past its rows and
/// columns.
fn pack_block<K: MicroKernel>(a: &Rows, m0: usize, kp: usize, out: &mut [u16]) {
    let rows = a.rows.saturating_sub(m0).min(K::MR);
    for (i, dst) in out.chunks_exact_mut(kp).enumerate() {
        if i < rows {
            convert(a.row(m0 + i), &mut dst[..a.cols]);
            dst[a.cols..].fill(0);
        } else {
            dst.fill(0);
        }
    }
}

/// Packs columns `n0..n0 + NR` of `b` as bf16 `[kp / 2][NR][2]`: the values of rows `2r` and
/// `2r + 1` side by side, zeros past its rows and columns.
fn pack_panel<K: MicroKernel>(b: &Rows, n0: usize, kp: usize, out: &mut [u16]) {
    let nr = K::NR;
    let (k, cols) = (b.rows, b.cols.saturating_sub(n0).min(nr));
    for (r, dst) in out.chunks_exact_mut(2 * nr).take(kp / 2).enumerate() {
        let (even, odd) = (2 * r, 2 * r + 1);
        if even >= k {
            dst.fill(0);
            continue;
        }
        let first = &b.row(even)[n0..n0 + cols];
        match odd < k {
            true => interleave(first, &b.row(odd)[n0..n0 + cols], &mut dst[..2 * cols]),
            false => interleave(first, &ZEROS[..cols], &mut dst[..2 * cols]),
        }
        dst[2 * cols..].fill(0);
    }
}

/// A row of zeros for the odd row past an operand's end, as wide as the widest panel.
static ZEROS: [f32; 64] = [0.0; 64];

/// `dst[i] = bf16(src[i])`.
fn convert(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512bf16::available() {
        // SAFETY: the CPU has AVX512-BF16 and AVX512-BW.
        return unsafe { avx512bf16::convert(src, dst) };
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = to_bf16(s));
}

/// `dst[2i] = bf16(even[i])`, `dst[2i + 1] = bf16(odd[i])`.
fn interleave(even: &[f32], odd: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512bf16::available() {
        // SAFETY: the CPU has AVX512-BF16 and AVX512-BW.
        return unsafe { avx512bf16::interleave(even, odd, dst) };
    }
    for ((pair, &e), &o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
        pair[0] = to_bf16(e);
        pair[1] = to_bf16(o);
    }
}

#[cfg(test)]
mod tests;
