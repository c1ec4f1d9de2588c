//! Pooling against hand-computed numbers, direct loops and finite differences.

use super::*;
use crate::test_util::*;
use rand::seq::SliceRandom;

fn run_max(x: &[f32], shape: (usize, usize, usize, usize), spec: &Pool2dSpec) -> Vec<f32> {
    let xt: Tensor4<Cpu> = Cpu::default().tensor_from_vec(x.to_vec(), shape);
    max_pool2d(xt, spec.kernel, spec.stride, spec.padding)
        .unwrap()
        .as_vec()
}

fn run_avg(x: &[f32], shape: (usize, usize, usize, usize), spec: &Pool2dSpec) -> Vec<f32> {
    let xt: Tensor4<Cpu> = Cpu::default().tensor_from_vec(x.to_vec(), shape);
    avg_pool2d_padded(xt, spec.kernel, spec.stride, spec.padding)
        .unwrap()
        .as_vec()
}

/// Direct loops; `max = true` for max pooling, else average with count_include_pad.
fn naive(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    s: &Pool2dSpec,
    max: bool,
) -> Vec<f32> {
    let (oh, ow) = s.output_size(h, w);
    let mut y = Vec::new();
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                for ki in 0..s.kernel.0 {
                    for kj in 0..s.kernel.1 {
                        let iy = (oy * s.stride.0 + ki) as isize - s.padding.0 as isize;
                        let ix = (ox * s.stride.1 + kj) as isize - s.padding.1 as isize;
                        if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                            continue;
                        }
                        let v = x[(p * h + iy as usize) * w + ix as usize];
                        acc = if max { acc.max(v) } else { acc + v };
                    }
                }
                y.push(if max {
                    acc
                } else {
                    acc / (s.kernel.0 * s.kernel.1) as f32
                });
            }
        }
    }
    y
}

fn spec(kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Pool2dSpec {
    Pool2dSpec {
        kernel,
        stride,
        padding,
    }
}

fn specs() -> Vec<(Pool2dSpec, (usize, usize, usize, usize))> {
    vec![
        (spec((2, 2), (2, 2), (0, 0)), (2, 3, 6, 6)),
        (spec((3, 3), (2, 2), (1, 1)), (2, 3, 7, 8)),
        (spec((3, 2), (1, 2), (1, 0)), (3, 2, 5, 7)),
        (spec((2, 2), (1, 1), (1, 1)), (1, 2, 3, 4)),
    ]
}

/// Distinct values at least 0.1 apart, so finite differences never reorder a window.
fn separated(seed: u64, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len)
        .map(|i| i as f32 * 0.1 - len as f32 * 0.05)
        .collect();
    v.shuffle(&mut rng(seed));
    v
}

#[test]
fn max_pool_hand_computed() {
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let s = spec((2, 2), (2, 2), (0, 0));
    assert_eq!(run_max(&x, (1, 1, 4, 4), &s), vec![5.0, 7.0, 13.0, 15.0]);
    // Padding is -inf: corner windows of a 3x3/stride-2/pad-1 pool see only real pixels.
    let s = spec((3, 3), (2, 2), (1, 1));
    assert_eq!(run_max(&x, (1, 1, 4, 4), &s), vec![5.0, 7.0, 13.0, 15.0]);
    let neg: Vec<f32> = x.iter().map(|v| -v - 1.0).collect();
    assert_eq!(
        run_max(&neg, (1, 1, 4, 4), &s),
        vec![-1.0, -2.0, -5.0, -6.0]
    );
}

#[test]
fn avg_pool_hand_computed() {
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let xt: Tensor4<Cpu> = Cpu::default().tensor_from_vec(x.clone(), (1, 1, 4, 4));
    let y = avg_pool2d(xt, (2, 2), (2, 2)).unwrap().as_vec();
    assert_eq!(y, vec![2.5, 4.5, 10.5, 12.5]);
    // count_include_pad: the top-left 3x3 window over padding holds 0 + 1 + 4 + 5 = 10 and is
    // divided by 9, not 4.
    let y = run_avg(&x, (1, 1, 4, 4), &spec((3, 3), (2, 2), (1, 1)));
    assert_eq!(y[0], 10.0 / 9.0);
}

#[test]
fn pools_match_naive_loops() {
    let mut rng = rng(61);
    for (s, shape) in specs() {
        let x = random(&mut rng, shape.0 * shape.1 * shape.2 * shape.3);
        assert_eq!(run_max(&x, shape, &s), naive(&x, shape, &s, true), "{s:?}");
        assert_close(
            &format!("{s:?}"),
            &run_avg(&x, shape, &s),
            &naive(&x, shape, &s, false),
            1e-6,
        );
    }
}

#[test]
fn max_pool_gradient_routes_to_the_maximum() {
    // Overlapping windows (3x3, stride 1): each pixel's gradient counts the windows it wins.
    let (n, c, h, w) = (1, 1, 4, 4);
    let x = separated(5, 16);
    let s = spec((3, 3), (1, 1), (0, 0));
    let xt: Tensor4<Cpu> = Cpu::default().tensor_from_vec(x.clone(), (n, c, h, w));
    let y = max_pool2d(xt.leaky_trace(), s.kernel, s.stride, s.padding).unwrap();
    let g = y.sum().backward().get(&xt).as_vec();
    let mut want = vec![0.0; 16];
    for oy in 0..2 {
        for ox in 0..2 {
            let idx = (0..3)
                .flat_map(|i| (0..3).map(move |j| (oy + i) * 4 + ox + j))
                .max_by(|&a, &b| x[a].total_cmp(&x[b]))
                .unwrap();
            want[idx] += 1.0;
        }
    }
    assert_eq!(g, want);
    // Ties go to the first maximum in row-major order, as in PyTorch.
    let xt: Tensor4<Cpu> = Cpu::default().tensor_from_vec(vec![1.0; 4], (1, 1, 2, 2));
    let y = max_pool2d(xt.leaky_trace(), (2, 2), (2, 2), (0, 0)).unwrap();
    assert_eq!(
        y.sum().backward().get(&xt).as_vec(),
        vec![1.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Cpu::default();
    for (seed, (s, shape)) in specs().into_iter().enumerate() {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        let x = separated(70 + seed as u64, len);
        let (oh, ow) = s.output_size(shape.2, shape.3);
        let r = random(&mut rng(80 + seed as u64), shape.0 * shape.1 * oh * ow);
        let out = (shape.0, shape.1, oh, ow);
        for max in [true, false] {
            let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), shape);
            let y = if max {
                max_pool2d(xt.leaky_trace(), s.kernel, s.stride, s.padding)
            } else {
                avg_pool2d_padded(xt.leaky_trace(), s.kernel, s.stride, s.padding)
            }
            .unwrap();
            let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), out);
            let g = (y * rt).sum().backward().get(&xt).as_vec();
            check_finite_differences(
                &format!("{s:?} max={max}"),
                std::slice::from_ref(&x),
                &[g],
                &r,
                |p| {
                    if max {
                        run_max(&p[0], shape, &s)
                    } else {
                        run_avg(&p[0], shape, &s)
                    }
                },
            );
        }
    }
}

#[test]
fn spec_errors() {
    assert!(matches!(
        spec((2, 2), (2, 2), (2, 0)).validate(),
        Err(SpecError::PoolPadding { .. })
    ));
    assert!(matches!(
        spec((2, 2), (0, 2), (0, 0)).validate(),
        Err(SpecError::Zero { .. })
    ));
    assert_eq!(spec((3, 3), (2, 2), (1, 1)).output_size(28, 28), (14, 14));
}
