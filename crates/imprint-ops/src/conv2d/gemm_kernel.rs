//! conv2d by im2col and matrix products on any [`ProductKernel`]: each chunk of images is one
//! column matrix `[in * kh * kw, images * oh * ow]`, so each group costs one wide product per
//! chunk rather than one narrow product per image.

use super::cpu_kernel::{weight_grad_by_chunks, ConvPasses, Dims};
use crate::cpu_util::{
    col2im, gather, im2col, row_major, transposed, with_scratch, Chunks, Start, CHUNK_SCRATCH,
};
use crate::matmul::{matmul, Matmul};
use crate::precision::ProductKernel;
use rayon::prelude::*;

/// The passes of one convolution by im2col and the products of one kernel.
pub(crate) struct GemmPasses {
    d: Dims,
    mm: &'static dyn Matmul,
}

impl GemmPasses {
    pub fn new(d: Dims, kernel: ProductKernel) -> Self {
        Self {
            d,
            mm: matmul(kernel),
        }
    }
}

impl ConvPasses for GemmPasses {
    fn dims(&self) -> &Dims {
        &self.d
    }

    fn name(&self) -> &'static str {
        "im2col and products"
    }

    fn forward_into(&self, x: &[f32], w: &[f32], start: Start, y: &mut [f32]) {
        forward_into(self.mm, x, w, start, y, &self.d)
    }

    fn adjoint_into(&self, w: &[f32], dy: &[f32], gx: &mut [f32]) {
        adjoint_into(self.mm, w, dy, gx, &self.d)
    }

    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>) -> Vec<f32> {
        backward(self.mm, x, w, dy, gx, &self.d)
    }
}

/// `y = start + conv(x)` on plain slices: `x` is `[batch, in, h, w]`, `w` the weight, `y`
/// `[batch, out, oh, ow]`.
fn forward_into(mm: &dyn Matmul, x: &[f32], w: &[f32], start: Start, y: &mut [f32], d: &Dims) {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let chunks = Chunks::new(d.batch, d.col_len() + d.out_len());
    y.par_chunks_mut(chunks.images * d.out_len())
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .for_each(|(ys, xs)| {
            let images = xs.len() / d.in_len();
            let pitch = images * l;
            let col_len = d.geo.rows() * pitch;
            with_scratch(&CHUNK_SCRATCH, col_len + out_channels * pitch, |buf| {
                let (col, prod) = buf.split_at_mut(col_len);
                for (i, xi) in xs.chunks_exact(d.in_len()).enumerate() {
                    im2col(&d.geo, xi, &mut col[i * l..], pitch);
                }
                for g in 0..d.groups {
                    // prod_g[cgo, images * l] = W_g[cgo, kg] · col_g[kg, images * l]
                    mm.product(
                        &mut prod[g * cgo * pitch..(g + 1) * cgo * pitch],
                        row_major(&w[g * cgo * kg..(g + 1) * cgo * kg], cgo, kg),
                        row_major(&col[g * kg * pitch..(g + 1) * kg * pitch], kg, pitch),
                        false,
                        chunks.gemm_threads,
                    );
                }
                for (i, yi) in ys.chunks_exact_mut(d.out_len()).enumerate() {
                    for (c, row) in yi.chunks_exact_mut(l).enumerate() {
                        let src = &prod[c * pitch + i * l..][..l];
                        let pairs = row.iter_mut().zip(src);
                        match start {
                            Start::Zero => row.copy_from_slice(src),
                            Start::Bias(b) => pairs.for_each(|(y, p)| *y = p + b[c]),
                            Start::Accumulate => pairs.for_each(|(y, p)| *y += p),
                        }
                    }
                }
            });
        });
}

/// `gx += convᵀ(dy)` on plain slices: the input gradient alone, which is the transposed
/// convolution's forward pass.
fn adjoint_into(mm: &dyn Matmul, w: &[f32], dy: &[f32], gx: &mut [f32], d: &Dims) {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let chunks = Chunks::new(d.batch, d.col_len() + d.out_len());
    gx.par_chunks_mut(chunks.images * d.in_len())
        .zip(dy.par_chunks(chunks.images * d.out_len()))
        .for_each(|(gxs, dys)| {
            let pitch = dys.len() / d.out_len() * l;
            with_scratch(&CHUNK_SCRATCH, dys.len() + d.geo.rows() * pitch, |buf| {
                let (dyc, col) = buf.split_at_mut(dys.len());
                gather(dys, dyc, out_channels, l);
                for g in 0..d.groups {
                    // dcol_g[kg, images * l] = W_gᵀ[kg, cgo] · dY_g[cgo, images * l]
                    mm.product(
                        &mut col[g * kg * pitch..(g + 1) * kg * pitch],
                        transposed(&w[g * cgo * kg..(g + 1) * cgo * kg], kg, cgo),
                        row_major(&dyc[g * cgo * pitch..(g + 1) * cgo * pitch], cgo, pitch),
                        false,
                        chunks.gemm_threads,
                    );
                }
                for (i, gxi) in gxs.chunks_exact_mut(d.in_len()).enumerate() {
                    col2im(&d.geo, &col[i * l..], pitch, gxi);
                }
            });
        });
}

/// Backward pass on plain slices: adds `dL/dx` to `gx` (where given) and returns `dL/dW`.
fn backward(
    mm: &dyn Matmul,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &Dims,
) -> Vec<f32> {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let Chunks {
        images,
        gemm_threads,
    } = Chunks::new(d.batch, d.col_len() + d.out_len());
    weight_grad_by_chunks((x, dy, gx), d, images, w.len(), |xs, dys, gxs, gw| {
        let pitch = xs.len() / d.in_len() * l;
        let col_len = d.geo.rows() * pitch;
        with_scratch(&CHUNK_SCRATCH, col_len + out_channels * pitch, |buf| {
            // `col` holds first the chunk's columns for dW, then dL/dcol for dx.
            let (col, dyc) = buf.split_at_mut(col_len);
            for (i, xi) in xs.chunks_exact(d.in_len()).enumerate() {
                im2col(&d.geo, xi, &mut col[i * l..], pitch);
            }
            gather(dys, dyc, out_channels, l);
            for g in 0..d.groups {
                let dy_g = &dyc[g * cgo * pitch..(g + 1) * cgo * pitch];
                let col_g = &mut col[g * kg * pitch..(g + 1) * kg * pitch];
                let w_g = &w[g * cgo * kg..(g + 1) * cgo * kg];
                // dW_g[cgo, kg] += dY_g[cgo, images * l] · col_gᵀ[images * l, kg]
                let dw_lhs = row_major(dy_g, cgo, pitch);
                let gw_g = &mut gw[g * cgo * kg..(g + 1) * cgo * kg];
                mm.product(
                    gw_g,
                    dw_lhs,
                    transposed(col_g, pitch, kg),
                    true,
                    gemm_threads,
                );
                if gxs.is_some() {
                    // dcol_g = W_gᵀ · dY_g over this group's columns, which dW no longer needs.
                    let w_t = transposed(w_g, kg, cgo);
                    mm.product(col_g, w_t, row_major(dy_g, cgo, pitch), false, gemm_threads);
                }
            }
            let gxs = gxs.into_iter().flat_map(|g| g.chunks_exact_mut(d.in_len()));
            for (i, gxi) in gxs.enumerate() {
                col2im(&d.geo, &col[i * l..], pitch, gxi);
            }
        });
    })
}
