//! Building blocks shared by the CPU kernels: a strided gemm wrapper, im2col / col2im and the
//! split of a batch between threads.

/// Below this many multiply-adds, splitting one product between threads costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Matrix view for [`gemm`]: pointer, rows, columns, row stride, column stride.
pub(crate) struct View {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

/// `data` as a row-major `[rows, cols]` matrix.
pub(crate) fn row_major(data: &[f32], rows: usize, cols: usize) -> View {
    assert_eq!(data.len(), rows * cols, "matrix size");
    View {
        ptr: data.as_ptr(),
        rows,
        cols,
        row_stride: cols as isize,
        col_stride: 1,
    }
}

/// `data` is row-major `[cols, rows]`; the view is its transpose `[rows, cols]`.
pub(crate) fn transposed(data: &[f32], rows: usize, cols: usize) -> View {
    assert_eq!(data.len(), rows * cols, "matrix size");
    View {
        ptr: data.as_ptr(),
        rows,
        cols,
        row_stride: 1,
        col_stride: rows as isize,
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with `dst` row-major; `accumulate = false` overwrites
/// `dst` without reading it. Uses up to `threads` threads inside the product.
pub(crate) fn gemm(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, threads: usize) {
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
    let parallelism = if m * n * k >= PARALLEL_MIN_FLOPS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was built from a live slice holding exactly rows x cols elements with
    // matching strides (asserted in `row_major` / `transposed`), the inner dimensions agree,
    // and `dst` is borrowed mutably with m x n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
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

    /// A 1x1 kernel with unit stride and no padding: the column matrix is the image itself.
    pub fn is_identity(&self) -> bool {
        self.kernel == (1, 1)
            && self.stride == (1, 1)
            && self.padding == (0, 0)
            && self.grid == self.image
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

/// Where one grid row of one column-matrix row reads from: the image row starting at `start`,
/// with grid columns `lo..hi` reading image columns `x * stride + offset`.
#[derive(Clone, Copy)]
struct Segment {
    start: usize,
    lo: usize,
    hi: usize,
    offset: isize,
}

/// Calls `f(col_start, segment)` for every grid row of every column-matrix row, where
/// `col_start` indexes the column matrix and `segment` is `None` when the source image row
/// lies entirely in the padding.
#[inline(always)]
fn for_each_segment(g: &Geometry, mut f: impl FnMut(usize, Option<Segment>)) {
    let (kh, kw) = g.kernel;
    let (gh, gw) = g.grid;
    let (h, w) = g.image;
    for c in 0..g.channels {
        for i in 0..kh {
            let off_y = (i * g.dilation.0) as isize - g.padding.0 as isize;
            let (y_lo, y_hi) = valid_range(off_y, g.stride.0, h, gh);
            for j in 0..kw {
                let offset = (j * g.dilation.1) as isize - g.padding.1 as isize;
                let (lo, hi) = valid_range(offset, g.stride.1, w, gw);
                let row = ((c * kh + i) * kw + j) * gh * gw;
                for y in 0..gh {
                    let col_start = row + y * gw;
                    if y < y_lo || y >= y_hi {
                        f(col_start, None);
                        continue;
                    }
                    let iy = ((y * g.stride.0) as isize + off_y) as usize;
                    let start = (c * h + iy) * w;
                    f(
                        col_start,
                        Some(Segment {
                            start,
                            lo,
                            hi,
                            offset,
                        }),
                    );
                }
            }
        }
    }
}

/// Writes the column matrix of `img` into `col` (every element overwritten).
pub(crate) fn im2col(g: &Geometry, img: &[f32], col: &mut [f32]) {
    assert_eq!(img.len(), g.image_len(), "image size");
    assert_eq!(col.len(), g.rows() * g.cols(), "column matrix size");
    let (gw, w, sx) = (g.grid.1, g.image.1, g.stride.1);
    for_each_segment(g, |col_start, seg| {
        let dst = &mut col[col_start..col_start + gw];
        let Some(Segment {
            start,
            lo,
            hi,
            offset,
        }) = seg
        else {
            dst.fill(0.0);
            return;
        };
        let src = &img[start..start + w];
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        if lo == hi {
            // Every column of this row reads padding; already zeroed above.
            return;
        }
        if sx == 1 {
            let s = (lo as isize + offset) as usize;
            dst[lo..hi].copy_from_slice(&src[s..s + (hi - lo)]);
        } else {
            for (x, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                *d = src[((x * sx) as isize + offset) as usize];
            }
        }
    });
}

/// Adds the column matrix `col` back onto `img` (the adjoint of [`im2col`]): every pixel
/// receives the sum of the column entries that read it.
pub(crate) fn col2im(g: &Geometry, col: &[f32], img: &mut [f32]) {
    assert_eq!(img.len(), g.image_len(), "image size");
    assert_eq!(col.len(), g.rows() * g.cols(), "column matrix size");
    let (w, sx) = (g.image.1, g.stride.1);
    for_each_segment(g, |col_start, seg| {
        let Some(Segment {
            start,
            lo,
            hi,
            offset,
        }) = seg.filter(|s| s.lo < s.hi)
        else {
            return;
        };
        let src = &col[col_start + lo..col_start + hi];
        let dst = &mut img[start..start + w];
        if sx == 1 {
            let s = (lo as isize + offset) as usize;
            for (d, v) in dst[s..s + (hi - lo)].iter_mut().zip(src) {
                *d += v;
            }
        } else {
            for (x, v) in (lo..hi).zip(src) {
                dst[((x * sx) as isize + offset) as usize] += v;
            }
        }
    });
}

/// Images per task when `n` images are split between the pool's threads, and how many threads
/// each task's gemm may use itself (more than one only when the batch is smaller than the pool).
pub(crate) fn batch_split(n: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let per_task = n.div_ceil(threads).max(1);
    let gemm_threads = (threads / n.max(1)).max(1);
    (per_task, gemm_threads)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            im2col(&g, &img, &mut col);
            assert_eq!(col, naive_im2col(&g, &img), "{g:?}");
            // <im2col(img), r> == <img, col2im(r)>
            let r: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.71).cos()).collect();
            let mut back = vec![0.0; img.len()];
            col2im(&g, &r, &mut back);
            let lhs: f64 = col.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = img
                .iter()
                .zip(&back)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!((lhs - rhs).abs() < 1e-4, "{g:?}: {lhs} vs {rhs}");
        }
    }
}
