//! conv_transpose2d against a direct scatter reference, finite differences, and as the
//! adjoint of conv2d.

use super::*;
use crate::test_util::*;
use crate::{conv2d, Conv2dSpec};

#[test]
fn forward_matches_hand_computed() {
    // One input channel, 2x2 input [[1 2] [3 4]], 2x2 kernel [[1 10] [100 1000]], stride 2:
    // every input pixel stamps a scaled copy of the kernel onto a disjoint 2x2 block.
    let spec = ConvTranspose2dSpec::new(1, 1, 2).stride(2);
    assert_eq!(spec.output_size(2, 2), (4, 4));
    let (x, w) = ([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0]);
    let y = run_conv(&spec, &x, &w, Some(&[0.5]), (1, 2, 2));
    #[rustfmt::skip]
    let want = [
        1.0, 10.0, 2.0, 20.0,
        100.0, 1000.0, 200.0, 2000.0,
        3.0, 30.0, 4.0, 40.0,
        300.0, 3000.0, 400.0, 4000.0,
    ];
    assert_eq!(y, want.map(|v| v + 0.5));
    // Stride 1: overlapping stamps add up; the centre of a 3x3 output gets 1*1000 + 2*100 +
    // 3*10 + 4*1.
    let spec = ConvTranspose2dSpec::new(1, 1, 2);
    let y = run_conv(&spec, &x, &w, None, (1, 2, 2));
    assert_eq!(y[4], 1234.0);
    assert_eq!(y.iter().sum::<f32>(), 10.0 * 1111.0);
}

fn specs() -> Vec<(ConvTranspose2dSpec, (usize, usize, usize))> {
    vec![
        (ConvTranspose2dSpec::new(3, 5, 3), (2, 4, 5)),
        (
            ConvTranspose2dSpec::new(6, 4, 4).stride(2).padding(1),
            (3, 5, 4),
        ),
        (
            ConvTranspose2dSpec::new(4, 6, 3)
                .stride(2)
                .padding(1)
                .output_padding(1)
                .groups(2),
            (3, 4, 5),
        ),
        (
            ConvTranspose2dSpec::new(4, 2, 3).dilation(2).padding(2),
            (2, 5, 6),
        ),
        (
            ConvTranspose2dSpec {
                kernel: (2, 3),
                stride: (3, 2),
                padding: (1, 0),
                output_padding: (2, 1),
                dilation: (1, 2),
                ..ConvTranspose2dSpec::new(3, 6, 1).groups(3)
            },
            (2, 3, 4),
        ),
        // output_padding >= stride is allowed when smaller than the dilation.
        (
            ConvTranspose2dSpec::new(2, 2, 2)
                .dilation(3)
                .output_padding(2),
            (2, 3, 3),
        ),
    ]
}

#[test]
fn forward_matches_naive_scatter() {
    let mut rng = rng(31);
    for (spec, dims) in specs() {
        check_against_naive(&mut rng, &spec, dims, 1e-5);
    }
}

#[test]
fn output_size_follows_pytorch() {
    let up = ConvTranspose2dSpec::new(64, 32, 4).stride(2).padding(1);
    assert_eq!(up.output_size(7, 7), (14, 14));
    assert_eq!(up.output_size(14, 14), (28, 28));
    // (5 - 1) * 2 - 2 + 2 * (3 - 1) + 1 + 1 = 12
    let s = ConvTranspose2dSpec::new(1, 1, 3)
        .stride(2)
        .padding(1)
        .dilation(2)
        .output_padding(1);
    assert_eq!(s.output_size(5, 5), (12, 12));
    assert!(matches!(
        ConvTranspose2dSpec::new(1, 1, 3)
            .stride(2)
            .output_padding(2)
            .validate(),
        Err(SpecError::OutputPadding { .. })
    ));
    assert_eq!(
        ConvTranspose2dSpec::new(1, 1, 1)
            .padding(1)
            .output_size_checked(2, 2),
        Err(SpecError::InputTooSmall { h: 2, w: 2 })
    );
    assert_eq!(up.weight_shape(), [64, 32, 4, 4]);
}

#[test]
fn is_the_adjoint_of_conv2d() {
    // <conv2d(a), b> == <a, conv_transpose2d(b)> with the same weight and no bias.
    let dev = Cpu::default();
    let mut rng = rng(41);
    // With output_padding >= stride (allowed through a large dilation) conv2d would map the
    // output back onto a larger grid, so the identity only holds for output_padding < stride.
    let specs = specs()
        .into_iter()
        .filter(|(s, _)| s.output_padding.0 < s.stride.0 && s.output_padding.1 < s.stride.1);
    for (spec, (n, h, wd)) in specs {
        let conv: Conv2dSpec = spec.as_conv();
        let (oh, ow) = spec.output_size(h, wd);
        // conv2d maps the transposed op's output size back to its input size.
        assert_eq!(conv.output_size(oh, ow), (h, wd), "{spec:?}");
        let a = random(&mut rng, n * conv.in_channels * oh * ow);
        let b = random(&mut rng, n * spec.in_channels * h * wd);
        let w = dev.tensor_from_vec(random(&mut rng, spec.weight_len()), (spec.weight_len(),));
        let at: Tensor4<Cpu> = dev.tensor_from_vec(a.clone(), (n, conv.in_channels, oh, ow));
        let bt: Tensor4<Cpu> = dev.tensor_from_vec(b.clone(), (n, spec.in_channels, h, wd));
        let lhs = dot(&conv2d(at, &w, None, &conv).unwrap().as_vec(), &b);
        let rhs = dot(&a, &conv_transpose2d(bt, &w, None, &spec).unwrap().as_vec());
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "{spec:?}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    for (seed, (spec, dims)) in specs().into_iter().enumerate() {
        check_conv_gradients(spec, dims, 50 + seed as u64);
    }
}

/// Transposed convolutions the direct kernels take: one group, the output the stride times the
/// input.
fn direct_specs() -> Vec<(ConvTranspose2dSpec, (usize, usize, usize))> {
    vec![
        (
            ConvTranspose2dSpec::new(3, 2, 4).stride(2).padding(1),
            (2, 3, 4),
        ),
        (ConvTranspose2dSpec::new(2, 5, 3).padding(1), (2, 4, 3)),
        (ConvTranspose2dSpec::new(4, 3, 2).stride(2), (2, 3, 3)),
    ]
}

#[test]
fn direct_path_matches_naive_scatter_and_finite_differences() {
    let mut rng = rng(61);
    for (seed, (spec, dims)) in direct_specs().into_iter().enumerate() {
        check_against_naive(&mut rng, &spec, dims, 1e-5);
        check_conv_gradients(spec, dims, 70 + seed as u64);
    }
}

/// Every bf16 kernel this CPU has on transposed convolutions (the autoencoder's decoder), within
/// the bound of rounding the inputs to bf16.
#[test]
fn bf16_kernels_stay_within_the_rounding_bound() {
    let cases = [
        (
            ConvTranspose2dSpec::new(64, 32, 4).stride(2).padding(1),
            (2, 7, 7),
        ),
        (
            ConvTranspose2dSpec::new(32, 1, 4).stride(2).padding(1),
            (1, 14, 14),
        ),
        (ConvTranspose2dSpec::new(5, 7, 3).padding(1), (2, 5, 6)),
    ];
    for kernel in bf16_kernels("conv_transpose2d bf16_kernels_stay_within_the_rounding_bound") {
        for (seed, (spec, dims)) in cases.iter().enumerate() {
            check_bf16_conv(spec, *dims, kernel, 80 + seed as u64);
        }
    }
}
