//! The direct kernels against plain loops over the same sub-plane geometry.

use super::*;
use crate::test_util::*;
use rand_chacha::ChaCha8Rng;

#[test]
fn stacks_gather_and_scatter_images() {
    let g = Geometry {
        channels: 2,
        image: (6, 8),
        grid: (3, 4),
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let plan = Plan::new(&g).unwrap();
    let stack = Stack {
        grid: plan.grid,
        phases: plan.phases,
        channels: 2,
        images: 3,
        stride: 4 * 3 * 12 + 5,
    };
    let images = random(&mut rng(1), 3 * 2 * 48);
    let mut laid = vec![f32::NAN; stack.len()];
    stack.gather(&images, &mut laid);
    // Image 2, channel 1, pixel (5, 6): phase (1, 0), pixel (2, 3) of that sub-plane, which
    // holds the three images one after another.
    let at = stack.stride + (2 * 3 + 2) * 12 + 2 * 4 + 3;
    assert_eq!(laid[at], images[(2 * 2 + 1) * 48 + 5 * 8 + 6]);
    let mut back = vec![0.0; images.len()];
    stack.scatter(&laid, &mut back, false);
    assert_eq!(back, images);
    stack.scatter(&laid, &mut back, true);
    assert!(back.iter().zip(&images).all(|(b, i)| *b == 2.0 * i));
    // One phase: the channels copied, `stride` apart.
    let flat = Stack {
        grid: (6, 8),
        phases: (1, 1),
        images: 1,
        stride: 50,
        ..stack
    };
    let mut padded = vec![-1.0; flat.len()];
    flat.gather(&images[..96], &mut padded);
    assert_eq!(padded[50..98], images[48..96]);
    assert_eq!(padded[98..], [-1.0, -1.0]);
}

#[test]
fn plans_need_an_image_the_stride_times_the_grid() {
    let g = |image, grid, stride| Geometry {
        channels: 1,
        image,
        grid,
        kernel: (3, 3),
        stride,
        padding: (1, 1),
        dilation: (1, 1),
    };
    assert!(Plan::new(&g((8, 8), (8, 8), (1, 1))).is_some());
    assert!(Plan::new(&g((8, 8), (4, 4), (2, 2))).is_some());
    // Valid (unpadded) stride 1, and an odd image at stride 2.
    assert!(Plan::new(&g((8, 8), (6, 6), (1, 1))).is_none());
    assert!(Plan::new(&g((7, 7), (4, 4), (2, 2))).is_none());
    // Tap (0, 0) at stride 2 and padding 1 reads row 2y - 1: phase 1, one row up.
    let plan = Plan::new(&g((8, 8), (4, 4), (2, 2))).unwrap();
    assert_eq!(
        plan.taps[0],
        Tap {
            plane: 3,
            dy: -1,
            dx: -1
        }
    );
    assert_eq!(
        plan.taps[4],
        Tap {
            plane: 0,
            dy: 0,
            dx: 0
        }
    );
}

/// `conv` by plain loops, in f64.
fn naive_conv(
    src: &[f32],
    stride: usize,
    grid: (usize, usize),
    taps: &[Tap],
    w: &[f32],
    outputs: usize,
) -> Vec<f32> {
    let (gh, gw) = grid;
    let inputs = w.len() / (outputs * taps.len());
    let mut out = vec![0.0; outputs * gh * gw];
    for o in 0..outputs {
        for y in 0..gh {
            for x in 0..gw {
                let mut acc = 0.0f64;
                for i in 0..inputs {
                    for (t, tap) in taps.iter().enumerate() {
                        let (sy, sx) = (y as isize + tap.dy, x as isize + tap.dx);
                        if sy < 0 || sx < 0 || sy >= gh as isize || sx >= gw as isize {
                            continue;
                        }
                        let at = i * stride + tap.plane * gh * gw + sy as usize * gw + sx as usize;
                        acc += src[at] as f64 * w[(o * inputs + i) * taps.len() + t] as f64;
                    }
                }
                out[(o * gh + y) * gw + x] = acc as f32;
            }
        }
    }
    out
}

/// Input channels, output channels, grid and taps of one test convolution.
type Case = (usize, usize, (usize, usize), Vec<Tap>);

fn cases() -> Vec<Case> {
    let square = |r: isize, planes: usize| {
        let mut taps = Vec::new();
        for plane in 0..planes {
            for dy in -r..=r {
                for dx in -r..=r {
                    taps.push(Tap { plane, dy, dx });
                }
            }
        }
        taps
    };
    vec![
        // Channel counts off the blocks, grids off the vectors.
        (3, 5, (7, 9), square(1, 1)),
        (6, 9, (4, 4), square(1, 2)),
        (4, 4, (1, 3), square(2, 1)),
        (
            2,
            1,
            (11, 5),
            vec![Tap {
                plane: 0,
                dy: 0,
                dx: 0,
            }],
        ),
        (5, 7, (8, 8), square(1, 1)),
    ]
}

#[test]
fn conv_matches_plain_loops_from_every_start() {
    for kernels in Kernels::on_this_cpu() {
        conv_matches_plain_loops_in(kernels);
    }
}

fn conv_matches_plain_loops_in(kernels: Kernels) {
    let mut rng = rng(5);
    for (inputs, outputs, grid, taps) in cases() {
        let (plane_len, planes) = plane_sizes(grid, &taps);
        let stride = planes * plane_len + 3;
        let src = random(&mut rng, inputs * stride);
        let (w, packed) = random_weights(&mut rng, (outputs, inputs, taps.len()));
        let bias = random(&mut rng, outputs);
        let set = TapSet::new(grid, 1, &taps);
        let want = naive_conv(&src, stride, grid, &taps, &w, outputs);
        // Output channels padded apart, the padding left alone.
        let dst_stride = plane_len + 5;
        let mut dst = vec![7.0; outputs * dst_stride];
        let run = |dst: &mut [f32], start| {
            conv_in(
                kernels,
                &src,
                stride,
                &set,
                &packed,
                (dst, dst_stride),
                start,
            )
        };
        run(&mut dst, Start::Zero);
        let got = |dst: &[f32]| -> Vec<f32> {
            dst.chunks(dst_stride)
                .flat_map(|c| c[..plane_len].to_vec())
                .collect()
        };
        assert_close(&format!("{kernels:?} zero"), &got(&dst), &want, 1e-5);
        assert!(dst
            .chunks(dst_stride)
            .all(|c| c[plane_len..].iter().all(|&v| v == 7.0)));
        run(&mut dst, Start::Accumulate);
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("{kernels:?} accumulate"), &got(&dst), &twice, 1e-5);
        run(&mut dst, Start::Bias(&bias));
        let biased: Vec<f32> = want
            .iter()
            .enumerate()
            .map(|(k, v)| v + bias[k / plane_len])
            .collect();
        assert_close(&format!("{kernels:?} bias"), &got(&dst), &biased, 1e-5);
    }
}

#[test]
fn weight_grad_matches_plain_loops() {
    for kernels in Kernels::on_this_cpu() {
        weight_grad_matches_plain_loops_in(kernels);
    }
}

fn weight_grad_matches_plain_loops_in(kernels: Kernels) {
    let mut rng = rng(6);
    for (inputs, outputs, grid, taps) in cases() {
        let (plane_len, planes) = plane_sizes(grid, &taps);
        let stride = planes * plane_len;
        let images = 3;
        let x = random(&mut rng, images * inputs * stride);
        let dy = random(&mut rng, images * outputs * plane_len);
        let set = TapSet::new(grid, 1, &taps);
        let mut gw = vec![0.5; outputs * inputs * taps.len()];
        // dy with its channels padded apart.
        let dy_stride = plane_len + 7;
        let mut dy_padded = vec![f32::NAN; images * outputs * dy_stride];
        for (d, s) in dy_padded.chunks_mut(dy_stride).zip(dy.chunks(plane_len)) {
            d[..plane_len].copy_from_slice(s);
        }
        let dy_arg = (&dy_padded[..], dy_stride);
        weight_grad_in(
            kernels,
            (&x, stride),
            dy_arg,
            (outputs, inputs),
            &set,
            &mut gw,
        );
        // dW[o][i][t] = Σ dy[o] · (the conv of x through a one-hot weight at (o, i, t)).
        let mut want = vec![0.5f32; gw.len()];
        for image in 0..images {
            let xi = &x[image * inputs * stride..(image + 1) * inputs * stride];
            let dyi = &dy[image * outputs * plane_len..(image + 1) * outputs * plane_len];
            for (k, wk) in want.iter_mut().enumerate() {
                let mut one_hot = vec![0.0; gw.len()];
                one_hot[k] = 1.0;
                let y = naive_conv(xi, stride, grid, &taps, &one_hot, outputs);
                *wk += dot(&y, dyi) as f32;
            }
        }
        assert_close(&format!("{kernels:?} weight grad"), &gw, &want, 1e-4);
    }
}

/// Three images stacked into one tall grid per sub-plane give each image's own convolution:
/// no tap reads across the seams.
#[test]
fn stacked_images_stay_apart() {
    for kernels in Kernels::on_this_cpu() {
        stacked_images_stay_apart_in(kernels);
    }
}

fn stacked_images_stay_apart_in(kernels: Kernels) {
    let mut rng = rng(7);
    for (inputs, outputs, grid, taps) in cases() {
        let ((plane_len, planes), images) = (plane_sizes(grid, &taps), 3);
        let stride = planes * images * plane_len;
        let src = random(&mut rng, inputs * stride);
        let (w, packed) = random_weights(&mut rng, (outputs, inputs, taps.len()));
        let set = TapSet::new(grid, images, &taps);
        let dst_stride = images * plane_len;
        let mut dst = vec![0.0; outputs * dst_stride];
        let out = (&mut dst[..], dst_stride);
        conv_in(kernels, &src, stride, &set, &packed, out, Start::Zero);
        for g in 0..images {
            // Image g's sub-planes, alone.
            let mut one = Vec::new();
            for i in 0..inputs {
                for p in 0..planes {
                    let at = i * stride + (p * images + g) * plane_len;
                    one.extend_from_slice(&src[at..at + plane_len]);
                }
            }
            let want = naive_conv(&one, planes * plane_len, grid, &taps, &w, outputs);
            let got: Vec<f32> = (0..outputs)
                .flat_map(|o| dst[o * dst_stride + g * plane_len..][..plane_len].to_vec())
                .collect();
            assert_close(
                &format!("{kernels:?} {grid:?} image {g}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

/// Random weights `[outputs, inputs, taps]`, and the same packed for the kernels.
fn random_weights(rng: &mut ChaCha8Rng, dims: (usize, usize, usize)) -> (Vec<f32>, Packed) {
    let (outputs, inputs, taps) = dims;
    let w = random(rng, outputs * inputs * taps);
    let packed = Packed::new(dims, |o, i, t| w[(o * inputs + i) * taps + t]);
    (w, packed)
}

/// The length of one sub-plane of `grid`, and how many sub-planes the taps read.
fn plane_sizes(grid: (usize, usize), taps: &[Tap]) -> (usize, usize) {
    let planes = taps.iter().map(|t| t.plane + 1).max().unwrap();
    (grid.0 * grid.1, planes)
}
