//! Building blocks shared by the CPU kernels: a strided gemm wrapper, im2col / col2im and the
//! split of a batch into chunks of images that share one product.

use rayon::prelude::*;
use std::cell::Cell;
use std::sync::Mutex;
use std::thread::LocalKey;

/// Below this many multiply-adds, splitting one product between threads costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// What a convolution's output starts from before its products are added.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    Zero,
    /// One value per output channel.
    Bias(&'a [f32]),
    /// What the output already holds.
    Accumulate,
}

/// Matrix view for [`gemm`] and the bf16 products: a row-major matrix, or the transpose of one.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Whether `data` holds the transpose, row-major `[cols, rows]`.
    transposed: bool,
}

/// `data` as a row-major `[rows, cols]` matrix.
pub(crate) fn row_major(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    assert_eq!(data.len(), rows * cols, "matrix size");
    View {
        data,
        rows,
        cols,
        transposed: false,
    }
}

/// `data` is row-major `[cols, rows]`; the view is its transpose `[rows, cols]`.
pub(crate) fn transposed(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    assert_eq!(data.len(), rows * cols, "matrix size");
    View {
        data,
        rows,
        cols,
        transposed: true,
    }
}

impl<'a> View<'a> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the data holds the transpose, row-major `[cols, rows]`; else it is row-major
    /// `[rows, cols]`.
    pub fn is_transposed(&self) -> bool {
        self.transposed
    }

    /// The data, laid out as [`Self::is_transposed`] says.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// The transpose, on the same data.
    pub fn t(&self) -> View<'a> {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            transposed: !self.transposed,
        }
    }

    /// `(row stride, column stride)` in elements.
    fn strides(&self) -> (isize, isize) {
        match self.transposed {
            false => (self.cols as isize, 1),
            true => (1, self.rows as isize),
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with `dst` row-major; `accumulate = false` overwrites
/// `dst` without reading it. Uses up to `threads` threads inside the product.
pub(crate) fn gemm(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, threads: usize) {
    let ((lhs_rs, lhs_cs), (rhs_rs, rhs_cs)) = (lhs.strides(), rhs.strides());
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions differ");
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
    let parallel = m * n * k >= PARALLEL_MIN_FLOPS && threads > 1;
    // The two gemm versions share this call, each with its own `Parallelism`.
    macro_rules! product {
        ($gemm:ident) => {{
            let parallelism = match parallel {
                true => $gemm::Parallelism::Rayon(threads),
                false => $gemm::Parallelism::None,
            };
            // SAFETY: every view was built from a live slice holding exactly rows x cols
            // elements with matching strides (asserted in `row_major` / `transposed`), the
            // inner dimensions agree, and `dst` is borrowed mutably with m x n elements.
            unsafe {
                $gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    accumulate,
                    lhs.data.as_ptr(),
                    lhs_cs,
                    lhs_rs,
                    rhs.data.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        }};
    }
    // gemm 0.19 picks its AVX-512 micro-kernels by itself wherever the CPU has them; with
    // AVX-512 switched off, the products go to gemm 0.15 (the version dfdx brings), whose
    // micro-kernels on stable Rust are FMA at AVX2 width, as on a CPU without AVX-512.
    match crate::isa::avx512_switched_off() {
        true => product!(gemm_fma),
        false => product!(gemm),
    }
}

/// How a `[channels, h, w]` image maps to a `[channels * kh * kw, grid_h * grid_w]` column
/// matrix: column `(y, x)` of row `(c, i, j)` holds pixel
/// `(c, y * stride.0 + i * dilation.0 - padding.0, x * stride.1 + j * dilation.1 - padding.1)`,
/// or zero where that falls outside the image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub channels: usize,
    pub image: (usize, usize),
    pub grid: (usize, usize),
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Geometry {
    pub fn image_len(&self) -> usize {
        self.channels * self.image.0 * self.image.1
    }

    pub fn rows(&self) -> usize {
        self.channels * self.kernel.0 * self.kernel.1
    }

    pub fn cols(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// Elements a column matrix with rows `pitch` apart must hold: all rows but the last in
    /// full, then the last row's own columns.
    fn col_span(&self, pitch: usize) -> usize {
        assert!(pitch >= self.cols(), "pitch shorter than a row");
        (self.rows() - 1) * pitch + self.cols()
    }
}

/// Grid positions `p` in `0..count` whose source `p * stride + offset` lies in `0..size`, as a
/// half-open range (empty when none do).
fn valid_range(offset: isize, stride: usize, size: usize, count: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset + s - 1) / s) as usize
    };
    let last = size as isize - 1 - offset;
    let hi = if last < 0 {
        0
    } else {
        count.min((last / s) as usize + 1)
    };
    (lo.min(hi), hi)
}

/// Index of the first element of phase `p` in an image row of width `w` reordered by
/// [`split_phases`] with stride `sx`.
fn phase_start(p: usize, w: usize, sx: usize) -> usize {
    (0..p).map(|q| w.saturating_sub(q).div_ceil(sx)).sum()
}

/// Reorders every `w`-wide row of `img` by phase: first the columns `0, sx, 2 sx, ..`, then
/// `1, 1 + sx, ..`, and so on. The columns one kernel offset reads with horizontal stride `sx`
/// then lie next to each other, so im2col and col2im move contiguous runs instead of strided
/// single elements.
fn split_phases(img: &[f32], w: usize, sx: usize, out: &mut [f32]) {
    for (row, dst) in img.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        let mut dst = dst.iter_mut();
        for p in 0..sx.min(w) {
            row[p..]
                .iter()
                .step_by(sx)
                .zip(&mut dst)
                .for_each(|(v, d)| *d = *v);
        }
    }
}

/// Adds `split`, laid out by [`split_phases`], back onto `img` in the natural order.
fn merge_phases_add(split: &[f32], w: usize, sx: usize, img: &mut [f32]) {
    for (src, row) in split.chunks_exact(w).zip(img.chunks_exact_mut(w)) {
        let mut src = src.iter();
        for p in 0..sx.min(w) {
            row[p..]
                .iter_mut()
                .step_by(sx)
                .zip(&mut src)
                .for_each(|(d, v)| *d += v);
        }
    }
}

/// Where one grid row of one column-matrix row reads from: grid columns `lo..hi` read the
/// consecutive elements starting at `src` of the image with rows split by [`split_phases`]
/// (the image itself when the horizontal stride is 1); the other columns read padding.
#[derive(Clone, Copy)]
struct Segment {
    src: usize,
    lo: usize,
    hi: usize,
}

/// Calls `f(col_start, segment)` for every grid row of every column-matrix row, where
/// `col_start` indexes a column matrix whose rows are `pitch` elements apart and `segment` is
/// `None` when every column of that grid row reads padding.
#[inline(always)]
fn for_each_segment(g: &Geometry, pitch: usize, mut f: impl FnMut(usize, Option<Segment>)) {
    let (kh, kw) = g.kernel;
    let (gh, gw) = g.grid;
    let (h, w) = g.image;
    let sx = g.stride.1;
    for c in 0..g.channels {
        for i in 0..kh {
            let off_y = (i * g.dilation.0) as isize - g.padding.0 as isize;
            let (y_lo, y_hi) = valid_range(off_y, g.stride.0, h, gh);
            for j in 0..kw {
                let offset = (j * g.dilation.1) as isize - g.padding.1 as isize;
                let (lo, hi) = valid_range(offset, sx, w, gw);
                let row = ((c * kh + i) * kw + j) * pitch;
                // Image column `x * sx + offset` sits in phase `offset mod sx`, at position
                // `x + offset div sx` within it.
                let in_row = if lo < hi {
                    let phase = phase_start(offset.rem_euclid(sx as isize) as usize, w, sx);
                    (phase as isize + offset.div_euclid(sx as isize) + lo as isize) as usize
                } else {
                    0
                };
                for y in 0..gh {
                    let col_start = row + y * gw;
                    if lo == hi || y < y_lo || y >= y_hi {
                        f(col_start, None);
                        continue;
                    }
                    let iy = ((y * g.stride.0) as isize + off_y) as usize;
                    let src = (c * h + iy) * w + in_row;
                    f(col_start, Some(Segment { src, lo, hi }));
                }
            }
        }
    }
}

/// Writes the column matrix of `img` into the first `g.cols()` columns of `col`, whose rows are
/// `pitch` elements apart (every one of those elements overwritten, the rest left alone). A
/// pitch wider than one image's columns lets several images share one column matrix.
pub(crate) fn im2col(g: &Geometry, img: &[f32], col: &mut [f32], pitch: usize) {
    assert_eq!(img.len(), g.image_len(), "image size");
    assert!(col.len() >= g.col_span(pitch), "column matrix size");
    let (gw, w, sx) = (g.grid.1, g.image.1, g.stride.1);
    let mut copy = |src: &[f32]| {
        for_each_segment(g, pitch, |col_start, seg| {
            let dst = &mut col[col_start..col_start + gw];
            let Some(Segment { src: s, lo, hi }) = seg else {
                dst.fill(0.0);
                return;
            };
            dst[..lo].fill(0.0);
            dst[lo..hi].copy_from_slice(&src[s..s + (hi - lo)]);
            dst[hi..].fill(0.0);
        })
    };
    if sx == 1 {
        copy(img);
    } else {
        with_scratch(&SPLIT_SCRATCH, img.len(), |split| {
            split_phases(img, w, sx, split);
            copy(split);
        });
    }
}

/// Adds the column matrix in the first `g.cols()` columns of `col` (rows `pitch` apart) back
/// onto `img` (the adjoint of [`im2col`]): every pixel receives the sum of the column entries
/// that read it.
pub(crate) fn col2im(g: &Geometry, col: &[f32], pitch: usize, img: &mut [f32]) {
    assert_eq!(img.len(), g.image_len(), "image size");
    assert!(col.len() >= g.col_span(pitch), "column matrix size");
    let (w, sx) = (g.image.1, g.stride.1);
    let accumulate = |dst: &mut [f32]| {
        for_each_segment(g, pitch, |col_start, seg| {
            let Some(Segment { src: s, lo, hi }) = seg else {
                return;
            };
            let src = &col[col_start + lo..col_start + hi];
            for (d, v) in dst[s..s + (hi - lo)].iter_mut().zip(src) {
                *d += v;
            }
        })
    };
    if sx == 1 {
        accumulate(img);
    } else {
        with_scratch(&SPLIT_SCRATCH, img.len(), |split| {
            split.fill(0.0);
            accumulate(split);
            merge_phases_add(split, w, sx, img);
        });
    }
}

/// `fn $name(args) -> R` calling `$body(args)` (an `#[inline(always)]` function) compiled for
/// AVX-512 where the CPU has it, else for AVX2 where it has that, else as it is: its plain
/// loops vectorise to 512- or 256-bit registers. The code is the same either way, and so are
/// its results (no floating-point contraction is allowed, so FMA does not change them).
macro_rules! with_wide_vectors {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn wide($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn half_wide($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::isa::avx512() {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { wide($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::isa::avx2() {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { half_wide($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use with_wide_vectors;

thread_local! {
    /// Plain-slice copies of an op's input and output gradient.
    pub(crate) static IO_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Column matrices and other per-chunk buffers of the kernels.
    pub(crate) static CHUNK_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Kernel outputs in their own layout, before they are put in place, which run while
    /// the other buffers are in use.
    pub(crate) static OUT_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Phase-split images inside im2col / col2im, which run while a chunk buffer is in use.
    static SPLIT_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Largest scratch buffer a thread keeps for the next call (a batch of 128 mid-sized images
/// with its output gradient fits); bigger ones are freed after use rather than held for the
/// thread's lifetime.
const KEEP_SCRATCH_BYTES: usize = 64 << 20;

/// Floats per cache line: buffers start on one, so that whole vectors of 16 never straddle two
/// lines (a load that does costs two).
const LINE_FLOATS: usize = 16;

/// Bytes of a cache line.
const LINE_BYTES: usize = 64;

/// Index of the first element of `buf` that starts a cache line.
fn line_start<T>(buf: &[T]) -> usize {
    let size = std::mem::size_of::<T>();
    (buf.as_ptr() as usize).wrapping_neg() % LINE_BYTES / size
}

/// Runs `f` on `len` elements of this thread's scratch buffer in `slot`, starting on a cache
/// line, with unspecified contents (whatever an earlier call left). Reusing the buffer spares a
/// fresh allocation per chunk, whose pages the kernel would otherwise have to fault in and zero
/// every time.
///
/// The buffer is taken out of the slot while `f` runs: a nested call on the same thread (rayon
/// may run another chunk here while a product waits for its helpers) finds the slot empty and
/// allocates its own.
pub(crate) fn with_scratch<T: Copy + Default, R>(
    slot: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let size = std::mem::size_of::<T>();
    let line = LINE_BYTES / size;
    let mut buf = slot.with(Cell::take);
    if buf.len() < len + line {
        buf.resize(len + line, T::default());
    }
    let start = line_start(&buf);
    let r = f(&mut buf[start..start + len]);
    if buf.len() * size <= KEEP_SCRATCH_BYTES {
        slot.with(|s| s.set(buf));
    }
    r
}

/// Scratch bytes one chunk of images may claim. A chunk's column matrix is written by im2col
/// and read straight back by the products; sized to stay in the core's L2 cache, and already
/// wide enough (hundreds of columns) that the products run at full speed. (On the reference
/// autoencoder layers 1 MiB beat both 256 KiB and 4 MiB.)
const CHUNK_BYTES: usize = 1 << 20;

/// How a batch of `n` images is cut into chunks whose columns sit side by side in one matrix,
/// so that each product spans a whole chunk instead of one image.
///
/// The cut depends on the batch and the image size alone, never on the thread count: the
/// weight gradient is summed chunk by chunk in chunk order, so another cut would add the same
/// numbers in another order, and a run on another machine would drift apart from this one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunks {
    /// Images per chunk (the last chunk may hold fewer).
    pub images: usize,
    /// Threads each chunk's products may use themselves (gemm's own split leaves every sum in
    /// the same order, so this may follow the pool).
    pub gemm_threads: usize,
}

/// Chunks come in multiples of this many, so that pools of up to as many threads share a batch
/// evenly.
const CHUNK_MULTIPLE: usize = 8;

impl Chunks {
    /// Chunks of at most [`CHUNK_BYTES`] given `floats_per_image` scratch floats per image, in
    /// a multiple of [`CHUNK_MULTIPLE`] (but no more chunks than images), sizes evened out so
    /// that no chunk is a small remainder.
    pub fn new(n: usize, floats_per_image: usize) -> Self {
        let cap = (CHUNK_BYTES / (4 * floats_per_image.max(1))).max(1);
        let chunks = n
            .div_ceil(cap)
            .max(1)
            .next_multiple_of(CHUNK_MULTIPLE)
            .min(n.max(1));
        let images = n.max(1).div_ceil(chunks);
        let threads = rayon::current_num_threads().max(1);
        // Only a batch of fewer chunks than threads leaves threads for the products themselves.
        let gemm_threads = (threads / n.max(1).div_ceil(images)).max(1);
        Self {
            images,
            gemm_threads,
        }
    }
}

/// Copies `src`, `[images, rows, len]`, into `dst`, `[rows, images * len]`: row `r` of `dst`
/// holds row `r` of every image, one after another.
pub(crate) fn gather(src: &[f32], dst: &mut [f32], rows: usize, len: usize) {
    assert_eq!(src.len(), dst.len(), "gather size");
    let pitch = src.len() / rows.max(1);
    for (b, img) in src.chunks_exact(rows * len).enumerate() {
        for (r, row) in img.chunks_exact(len).enumerate() {
            dst[r * pitch + b * len..][..len].copy_from_slice(row);
        }
    }
}

/// `buf` cut into `count` chunks of `len` (the last may be shorter), or `count` times `None`
/// where there is no buffer: the per-chunk view of an optional output.
pub(crate) fn optional_chunks(
    buf: Option<&mut [f32]>,
    len: usize,
    count: usize,
) -> Vec<Option<&mut [f32]>> {
    match buf {
        Some(b) => b.chunks_mut(len.max(1)).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}

/// Bytes of freed [`PooledVec`] buffers kept for reuse: a training step's worth of op
/// inputs at batch 128.
const POOL_BYTES: usize = 256 << 20;

/// Buffers of dropped [`PooledVec`]s, for the next ones.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` floats starting on a cache line, with unspecified contents, taken from a
/// pool of freed ones and given back on drop. The ops copy every input they keep for their
/// backward pass into one: a fresh `vec![0.0; len]` would zero memory the copy then
/// overwrites, a pass over all of it on one thread.
pub(crate) struct PooledVec {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl PooledVec {
    pub fn new(len: usize) -> Self {
        let want = len + LINE_FLOATS;
        let mut buf = POOL
            .lock()
            .ok()
            .and_then(|mut pool| {
                // The smallest buffer that fits.
                let fits = pool
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.capacity() >= want);
                let (k, _) = fits.min_by_key(|(_, b)| b.capacity())?;
                Some(pool.swap_remove(k))
            })
            .unwrap_or_default();
        // Only growth beyond what the buffer held is written here.
        buf.resize(want, 0.0);
        Self {
            start: line_start(&buf),
            buf,
            len,
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Drop for PooledVec {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut pool) = POOL.lock() {
            let held: usize = pool.iter().map(|b| b.capacity() * 4).sum();
            if held + buf.capacity() * 4 <= POOL_BYTES {
                pool.push(buf);
            }
        }
    }
}

/// Below this many floats, one thread zeroes a buffer as fast as all of them.
const PARALLEL_ZERO_MIN: usize = 1 << 16;

/// `vec![0.0; len]`, zeroed by all of rayon's threads: the allocator hands out recycled
/// memory, and one thread's memset over a large output would leave the others idle.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < PARALLEL_ZERO_MIN {
        return vec![0.0; len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0.0, len));
    v
}

/// Element-wise sum of `parts` (each `len` long), added in their order: the same partial results
/// always give the same total, however the threads that made them were scheduled.
pub(crate) fn sum_in_order(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0.0; len];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
    }
    total
}

/// Writes the transpose of row-major `src` (`[rows, cols]`) into `dst` (`[cols, rows]`), in
/// square tiles so that reads and writes both stay within a few cache lines.
pub(crate) fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 16;
    assert_eq!(src.len(), rows * cols, "transpose source size");
    assert_eq!(dst.len(), rows * cols, "transpose destination size");
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let out = &mut dst[c * rows + r0..c * rows + r1];
                for (o, r) in out.iter_mut().zip(r0..r1) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (3, 40), (17, 16), (33, 5)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    fn naive_im2col(g: &Geometry, img: &[f32]) -> Vec<f32> {
        let (kh, kw) = g.kernel;
        let (gh, gw) = g.grid;
        let (h, w) = g.image;
        let mut col = vec![0.0; g.rows() * g.cols()];
        for c in 0..g.channels {
            for i in 0..kh {
                for j in 0..kw {
                    for y in 0..gh {
                        for x in 0..gw {
                            let iy =
                                (y * g.stride.0 + i * g.dilation.0) as isize - g.padding.0 as isize;
                            let ix =
                                (x * g.stride.1 + j * g.dilation.1) as isize - g.padding.1 as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                col[(((c * kh + i) * kw + j) * gh + y) * gw + x] =
                                    img[(c * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_naive_and_col2im_is_its_adjoint() {
        let cases = [
            ((7, 9), (4, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
            ((5, 5), (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
            ((8, 7), (3, 2), (3, 2), (2, 3), (2, 0), (2, 2)),
            ((4, 4), (6, 6), (2, 2), (1, 1), (2, 2), (1, 1)),
            ((3, 3), (1, 1), (5, 5), (1, 1), (0, 0), (1, 1)),
        ];
        for (image, grid, kernel, stride, padding, dilation) in cases {
            let g = Geometry {
                channels: 2,
                image,
                grid,
                kernel,
                stride,
                padding,
                dilation,
            };
            let img: Vec<f32> = (0..g.image_len())
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let mut col = vec![f32::NAN; g.rows() * g.cols()];
            im2col(&g, &img, &mut col, g.cols());
            assert_eq!(col, naive_im2col(&g, &img), "{g:?}");
            // As the second of three images side by side: only its own columns change.
            let l = g.cols();
            let mut wide = vec![f32::NAN; g.rows() * 3 * l];
            im2col(&g, &img, &mut wide[l..], 3 * l);
            for (r, row) in wide.chunks_exact(3 * l).enumerate() {
                assert!(row[..l].iter().chain(&row[2 * l..]).all(|v| v.is_nan()));
                assert_eq!(row[l..2 * l], col[r * l..(r + 1) * l], "{g:?} row {r}");
            }
            // <im2col(img), r> == <img, col2im(r)>
            let r: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.71).cos()).collect();
            let mut back = vec![0.0; img.len()];
            col2im(&g, &r, g.cols(), &mut back);
            let lhs: f64 = col.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = img
                .iter()
                .zip(&back)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!((lhs - rhs).abs() < 1e-4, "{g:?}: {lhs} vs {rhs}");
            // The same from the middle of a wider matrix, with NaN in the other columns.
            let mut wide = vec![f32::NAN; g.rows() * 3 * l];
            for (dst, src) in wide.chunks_exact_mut(3 * l).zip(r.chunks_exact(l)) {
                dst[l..2 * l].copy_from_slice(src);
            }
            let mut back_wide = vec![0.0; img.len()];
            col2im(&g, &wide[l..], 3 * l, &mut back_wide);
            assert_eq!(back, back_wide, "{g:?}");
        }
    }

    /// The cut of a batch into chunks is the same in pools of any size, so conv results are.
    #[test]
    fn chunks_do_not_depend_on_the_thread_count() {
        let cut = |threads: usize, n: usize, per_image: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| Chunks::new(n, per_image).images)
        };
        for (n, per_image) in [(128, 11_172), (128, 100), (7, 50), (1, 10), (300, 200_000)] {
            let images = cut(1, n, per_image);
            assert_eq!(images, cut(2, n, per_image), "{n} images");
            assert_eq!(images, cut(5, n, per_image), "{n} images");
            assert!(images * 4 * per_image <= CHUNK_BYTES.max(4 * per_image));
        }
        // Enough chunks to share between up to eight threads.
        assert_eq!(cut(2, 128, 100), 16);
    }

    #[test]
    fn gather_puts_image_rows_side_by_side() {
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 12];
        // Two images of three rows of two.
        gather(&src, &mut dst, 3, 2);
        assert_eq!(
            dst,
            [0.0, 1.0, 6.0, 7.0, 2.0, 3.0, 8.0, 9.0, 4.0, 5.0, 10.0, 11.0]
        );
    }
}
