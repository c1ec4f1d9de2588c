//! conv2d against hand-computed numbers, a direct-loop reference and finite differences.

use super::*;
use crate::test_util::*;

#[test]
fn forward_matches_hand_computed() {
    // x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 2] [3 4]]
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let w = [1.0, 2.0, 3.0, 4.0];
    let spec = Conv2dSpec::new(1, 1, 2);
    // 1*1 + 2*2 + 3*4 + 4*5 = 37, then shifting right adds 10, down adds 30.
    assert_eq!(
        run_conv(&spec, &x, &w, Some(&[0.5]), (1, 3, 3)),
        vec![37.5, 47.5, 67.5, 77.5]
    );
    // Padding 1, stride 2: windows at (-1,-1), (-1,1), (1,-1), (1,1).
    let spec = spec.padding(1).stride(2);
    assert_eq!(spec.output_size(3, 3), (2, 2));
    assert_eq!(
        run_conv(&spec, &x, &w, None, (1, 3, 3)),
        vec![4.0, 2.0 * 3.0 + 3.0 * 4.0, 4.0 * 2.0 + 7.0 * 4.0, 77.0]
    );
    // Dilation 2 with a 2x2 kernel reads the four corners: 1 + 2*3 + 3*7 + 4*9.
    let spec = Conv2dSpec::new(1, 1, 2).dilation(2);
    assert_eq!(run_conv(&spec, &x, &w, None, (1, 3, 3)), vec![64.0]);
}

type Dims = (usize, usize, usize);

/// Each spec with the `(n, h, w)` of its forward check and the smaller ones of its finite
/// differences.
fn specs() -> Vec<(Conv2dSpec, Dims, Dims)> {
    vec![
        (Conv2dSpec::new(3, 5, 3), (2, 7, 9), (2, 5, 6)),
        (
            Conv2dSpec::new(4, 6, 3).stride(2).padding(1),
            (3, 9, 8),
            (3, 6, 5),
        ),
        (
            Conv2dSpec::new(4, 6, 3).dilation(2).padding(1).groups(2),
            (3, 11, 7),
            (2, 7, 6),
        ),
        (
            Conv2dSpec {
                kernel: (2, 3),
                stride: (2, 1),
                padding: (0, 2),
                dilation: (1, 2),
                ..Conv2dSpec::new(6, 3, 1).groups(3)
            },
            (3, 5, 6),
            (3, 5, 6),
        ),
        (
            Conv2dSpec::new(4, 4, 3).groups(4).padding(1),
            (2, 5, 5),
            (2, 4, 4),
        ),
        // 1x1 / stride 1 / no padding: the column matrix is the image itself.
        (Conv2dSpec::new(5, 3, 1), (3, 4, 6), (2, 3, 4)),
        (Conv2dSpec::new(4, 6, 1).groups(2), (2, 3, 3), (2, 3, 3)),
    ]
}

#[test]
fn forward_matches_naive_loops() {
    let mut rng = rng(11);
    for (spec, dims, _) in specs() {
        check_against_naive(&mut rng, &spec, dims, 1e-5);
    }
}

#[test]
fn forward_matches_naive_loops_at_autoencoder_size() {
    // Big enough that gemm splits products and the batch is shared between threads.
    let mut rng = rng(12);
    let spec = Conv2dSpec::new(32, 64, 3).stride(2).padding(1);
    let dims = (5, 14, 14);
    check_against_naive(&mut rng, &spec, dims, 1e-4);
}

#[test]
fn gradients_match_finite_differences() {
    for (seed, (spec, _, dims)) in specs().into_iter().enumerate() {
        let spec = Conv2dSpec {
            in_channels: spec.in_channels.min(4),
            out_channels: spec.out_channels.min(4),
            ..spec
        };
        let spec = if spec.validate().is_ok() {
            spec
        } else {
            Conv2dSpec { groups: 1, ..spec }
        };
        check_conv_gradients(spec, dims, 20 + seed as u64);
    }
}

#[test]
fn weight_may_be_four_dimensional() {
    let dev = Cpu::default();
    let mut rng = rng(3);
    let spec = Conv2dSpec::new(2, 3, 3).padding(1);
    let x = random(&mut rng, 2 * 2 * 4 * 4);
    let w = random(&mut rng, spec.weight_len());
    let [o, i, kh, kw] = spec.weight_shape();
    let w4: Tensor4<Cpu> = dev.tensor_from_vec(w.clone(), (o, i, kh, kw));
    let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), (2, 2, 4, 4));
    let y = conv2d(xt.leaky_trace(), &w4, None, &spec).unwrap();
    assert_eq!(y.as_vec(), run_conv(&spec, &x, &w, None, (2, 4, 4)));
    let grads = y.sum().backward();
    assert_eq!(*grads.get(&w4).shape(), (o, i, kh, kw));
}

#[test]
fn spec_sizes_and_errors() {
    let spec = Conv2dSpec::new(1, 32, 3).stride(2).padding(1);
    assert_eq!(spec.output_size(28, 28), (14, 14));
    assert_eq!(spec.weight_shape(), [32, 1, 3, 3]);
    // PyTorch: floor((10 + 2 - 2 * 2 - 1) / 3) + 1 = 3.
    assert_eq!(
        Conv2dSpec::new(1, 1, 3)
            .stride(3)
            .padding(1)
            .dilation(2)
            .output_size(10, 10),
        (3, 3)
    );
    assert!(matches!(
        Conv2dSpec::new(4, 6, 3).groups(4).validate(),
        Err(SpecError::Groups { .. })
    ));
    assert!(matches!(
        Conv2dSpec::new(4, 6, 3).stride(0).validate(),
        Err(SpecError::Zero { .. })
    ));
    assert_eq!(
        Conv2dSpec::new(1, 1, 5).output_size_checked(4, 9),
        Err(SpecError::InputTooSmall { h: 4, w: 9 })
    );
    let err = Conv2dSpec::new(3, 2, 3)
        .check((4, 5, 5), 54, Some(2))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input has 4 channels but the spec expects 3"
    );
    let err = Conv2dSpec::new(3, 2, 3)
        .check((3, 5, 5), 53, None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "weight has 53 elements but the spec needs 54"
    );
}

#[test]
#[should_panic(expected = "conv2d: bias has 3 elements but the spec needs 2")]
fn mismatched_bias_panics_with_the_reason() {
    let spec = Conv2dSpec::new(1, 2, 3);
    run_conv(&spec, &[0.0; 9], &[0.0; 18], Some(&[0.0; 3]), (1, 3, 3));
}

/// Weight and bias gradients summed over many images in a pool of several threads come out
/// bit-identical run after run, whatever the work stealing did.
#[test]
fn gradients_are_identical_run_after_run() {
    let dev = Cpu::default();
    let mut rng = rng(11);
    // Large enough images that the batch splits into several chunks per thread, so that
    // how the threads share the chunks varies between runs.
    let spec = Conv2dSpec::new(3, 8, 3).padding(1);
    let (n, h, wd) = (64, 32, 32);
    let (oh, ow) = spec.output_size(h, wd);
    let x = random(&mut rng, n * 3 * h * wd);
    let w = random(&mut rng, spec.weight_len());
    let b = random(&mut rng, 8);
    let r = random(&mut rng, n * 8 * oh * ow);
    let grads = || {
        let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), (n, 3, h, wd));
        let wt = dev.tensor_from_vec(w.clone(), (w.len(),));
        let bt = dev.tensor_from_vec(b.clone(), (b.len(),));
        let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), (n, 8, oh, ow));
        let y = conv2d(xt.leaky_trace(), &wt, Some(&bt), &spec).unwrap();
        let g = (y * rt).sum().backward();
        (g.get(&wt).as_vec(), g.get(&bt).as_vec())
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let first = pool.install(grads);
    for _ in 0..30 {
        assert!(
            pool.install(grads) == first,
            "gradients changed between runs"
        );
    }
}

/// Convolutions the direct kernels take: one group, the image the stride times the grid.
fn direct_specs() -> Vec<(Conv2dSpec, Dims)> {
    vec![
        (Conv2dSpec::new(3, 5, 3).padding(1), (2, 5, 6)),
        (Conv2dSpec::new(4, 6, 3).stride(2).padding(1), (3, 6, 4)),
        (Conv2dSpec::new(2, 3, 4).stride(2).padding(1), (2, 6, 6)),
        (Conv2dSpec::new(3, 4, 3).dilation(2).padding(2), (2, 5, 5)),
        (Conv2dSpec::new(5, 3, 1), (2, 3, 7)),
        (
            Conv2dSpec {
                kernel: (3, 1),
                padding: (1, 0),
                ..Conv2dSpec::new(2, 9, 1)
            },
            (2, 4, 5),
        ),
    ]
}

#[cfg(target_arch = "x86_64")]
#[test]
fn direct_plans_cover_the_resnet_and_autoencoder_convolutions() {
    if !crate::direct::available() {
        return;
    }
    let plan = |spec: Conv2dSpec, hw: usize| {
        let out = spec.output_size(hw, hw);
        super::direct_kernel::plan(&cpu_kernel::Dims::new(&spec, 1, (hw, hw), out)).is_some()
    };
    for (spec, hw) in [
        (Conv2dSpec::new(3, 16, 3).padding(1), 32),
        (Conv2dSpec::new(16, 32, 3).stride(2).padding(1), 32),
        (Conv2dSpec::new(1, 32, 3).stride(2).padding(1), 28),
        (Conv2dSpec::new(32, 64, 3).stride(2).padding(1), 14),
    ] {
        assert!(plan(spec, hw), "{spec:?} on {hw}x{hw}");
    }
    assert!(!plan(Conv2dSpec::new(4, 4, 3).groups(2).padding(1), 8));
    assert!(!plan(Conv2dSpec::new(4, 4, 3), 8));
}

#[test]
fn direct_forward_matches_naive_loops() {
    let mut rng = rng(31);
    for (spec, dims) in direct_specs() {
        check_against_naive(&mut rng, &spec, dims, 1e-5);
    }
}

#[test]
fn direct_gradients_match_finite_differences() {
    for (seed, (spec, dims)) in direct_specs().into_iter().enumerate() {
        check_conv_gradients(spec, dims, 40 + seed as u64);
    }
}

/// The direct kernels give the column-matrix kernels' results up to the order of the sums, and
/// the same bits on one and three threads, on every convolution of a CIFAR ResNet-20 and of the
/// MNIST autoencoder, its decoder's transposed ones included; a convolution's forward pass
/// gives the very same bits where gemm sums in one run.
#[cfg(target_arch = "x86_64")]
#[test]
fn direct_kernels_agree_with_the_column_kernels_on_model_layers() {
    use super::cpu_kernel::{Dims, Passes, SliceOp};
    use super::direct_kernel::{plan, DirectPasses};
    use super::gemm_kernel::GemmPasses;
    use crate::precision::ProductKernel;
    use crate::ConvTranspose2dSpec;
    if !crate::direct::available() {
        return;
    }
    let mut rng = rng(33);
    let convs = [
        (Conv2dSpec::new(3, 16, 3).padding(1), 32),
        (Conv2dSpec::new(16, 16, 3).padding(1), 32),
        (Conv2dSpec::new(16, 32, 3).stride(2).padding(1), 32),
        (Conv2dSpec::new(32, 32, 3).padding(1), 16),
        (Conv2dSpec::new(32, 64, 3).stride(2).padding(1), 16),
        (Conv2dSpec::new(64, 64, 3).padding(1), 8),
        (Conv2dSpec::new(1, 32, 3).stride(2).padding(1), 28),
        (Conv2dSpec::new(32, 64, 3).stride(2).padding(1), 14),
    ];
    let transposed = [
        (ConvTranspose2dSpec::new(64, 32, 4).stride(2).padding(1), 7),
        (ConvTranspose2dSpec::new(32, 1, 4).stride(2).padding(1), 14),
    ];
    // Whole stacks of small images and a shorter last one. A transposed convolution runs the
    // passes of the convolution that maps its output back to its input.
    let convs = convs.map(|(spec, hw)| {
        let d = Dims::new(&spec, 6, (hw, hw), spec.output_size(hw, hw));
        (format!("{spec:?} on {hw}x{hw}"), d, false)
    });
    let transposed = transposed.map(|(spec, hw)| {
        let d = Dims::new(&spec.as_conv(), 12, spec.output_size(hw, hw), (hw, hw));
        (format!("{spec:?} on {hw}x{hw}"), d, true)
    });
    for (label, d, is_transposed) in convs.into_iter().chain(transposed) {
        let op = |passes: Passes| match is_transposed {
            true => SliceOp::Transposed(passes),
            false => SliceOp::Conv(passes),
        };
        let plan = plan(&d).unwrap_or_else(|| panic!("{label}: no direct plan"));
        let direct = op(Box::new(DirectPasses { d, plan }));
        let gemm = op(Box::new(GemmPasses::new(d, ProductKernel::F32)));
        let (x_len, y_len, bias_len) = match is_transposed {
            true => (d.out_len(), d.in_len(), d.geo.channels),
            false => (d.in_len(), d.out_len(), d.groups * d.out_per_group),
        };
        let w_len = d.groups * d.out_per_group * d.k_per_group;
        let lens = [d.batch * x_len, w_len, bias_len, d.batch * y_len];
        let data = lens.map(|len| random(&mut rng, len));
        let got = on_threads(1, || slice_passes(&direct, &data));
        let again = on_threads(3, || slice_passes(&direct, &data));
        assert!(got == again, "{label}: thread count");
        let want = slice_passes(&gemm, &data);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(relative_difference(g, w) < 1e-5, "{label}: output {k}");
        }
        // Sums of up to 512 products gemm takes in one run, in the order the direct kernel
        // takes them too: the same bits (checkpoints keep computing what they did).
        if !is_transposed && d.k_per_group <= 512 {
            assert!(got[0] == want[0], "{label}: y not bit-identical");
        }
        // Without dL/dx the weight gradient is the same.
        let [x, w, _, dy] = &data;
        assert_eq!(direct.backward(x, w, dy, None), got[2], "{label}");
        assert_eq!(gemm.backward(x, w, dy, None), want[2], "{label}");
    }
}

/// Forward output and every gradient of a ResNet-sized convolution, bit for bit the same in
/// pools of one and three threads, on every kernel this CPU has.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut kernels = vec![crate::ProductKernel::F32];
    kernels.extend(bf16_kernels("results_do_not_depend_on_the_thread_count"));
    for kernel in kernels {
        results_do_not_depend_on_the_thread_count_on(kernel);
    }
}

fn results_do_not_depend_on_the_thread_count_on(kernel: crate::ProductKernel) {
    let mut rng = rng(35);
    for (spec, hw) in [
        (Conv2dSpec::new(16, 16, 3).padding(1), 32),
        (Conv2dSpec::new(16, 32, 3).stride(2).padding(1), 16),
        // Grouped: the column kernels.
        (Conv2dSpec::new(8, 8, 3).padding(1).groups(2), 12),
    ] {
        let n = 24;
        let (oh, ow) = spec.output_size(hw, hw);
        let x = random(&mut rng, n * spec.in_channels * hw * hw);
        let w = random(&mut rng, spec.weight_len());
        let b = random(&mut rng, spec.out_channels);
        let r = random(&mut rng, n * spec.out_channels * oh * ow);
        let results = || {
            let dev = Cpu::default();
            let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), (n, spec.in_channels, hw, hw));
            let wt = dev.tensor_from_vec(w.clone(), (w.len(),));
            let bt = dev.tensor_from_vec(b.clone(), (b.len(),));
            let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), (n, spec.out_channels, oh, ow));
            crate::with_kernel(kernel, || {
                let y = conv2d(xt.leaky_trace(), &wt, Some(&bt), &spec).unwrap();
                let y_vals = y.as_vec();
                let g = (y * rt).sum().backward();
                (y_vals, gradients!(g, &xt, &wt, &bt))
            })
        };
        let label = format!("{} {spec:?}", kernel.name());
        assert!(on_threads(1, results) == on_threads(3, results), "{label}");
    }
}

#[test]
fn without_input_grad_the_input_gets_no_gradient() {
    let dev = Cpu::default();
    let mut rng = rng(37);
    for spec in [
        Conv2dSpec::new(3, 4, 3).padding(1),
        Conv2dSpec::new(3, 4, 3).groups(1),
    ] {
        let x = random(&mut rng, 2 * 3 * 6 * 6);
        let w = random(&mut rng, spec.weight_len());
        let xt: Tensor4<Cpu> = dev.tensor_from_vec(x, (2, 3, 6, 6));
        let wt = dev.tensor_from_vec(w, (spec.weight_len(),));
        let grads = |spec: &Conv2dSpec| {
            let y = conv2d(xt.leaky_trace(), &wt, None, spec).unwrap();
            y.square().sum().backward()
        };
        let with = grads(&spec);
        let without = grads(&spec.without_input_grad());
        assert_eq!(with.get(&wt).as_vec(), without.get(&wt).as_vec());
        assert!(with.get(&xt).as_vec().iter().any(|&v| v != 0.0));
        let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| without.get(&xt)));
        assert!(missing.is_err(), "{spec:?}: the input has a gradient");
    }
}

/// Every bf16 kernel this CPU has, forward and both gradients, within the bound of rounding the
/// inputs to bf16: channel counts off the kernels' blocks, one image, stride 2, 1x1 and 3x3,
/// groups, and ResNet's layers.
#[test]
fn bf16_kernels_stay_within_the_rounding_bound() {
    let cases = [
        (Conv2dSpec::new(3, 5, 3).padding(1), (2, 7, 9)),
        (Conv2dSpec::new(17, 33, 3).stride(2).padding(1), (1, 9, 8)),
        (Conv2dSpec::new(17, 33, 3).stride(2).padding(1), (1, 10, 8)),
        (Conv2dSpec::new(3, 4, 3).dilation(2).padding(2), (2, 5, 5)),
        (Conv2dSpec::new(40, 24, 5).stride(2).padding(2), (3, 14, 14)),
        (Conv2dSpec::new(5, 3, 1), (3, 4, 6)),
        (Conv2dSpec::new(20, 40, 1).stride(2), (2, 6, 6)),
        (
            Conv2dSpec::new(4, 6, 3).dilation(2).padding(1).groups(2),
            (2, 7, 6),
        ),
        (Conv2dSpec::new(16, 16, 3).padding(1), (3, 16, 16)),
        (Conv2dSpec::new(32, 64, 3).stride(2).padding(1), (2, 16, 16)),
        (Conv2dSpec::new(64, 64, 3).padding(1), (2, 8, 8)),
    ];
    for kernel in bf16_kernels("bf16_kernels_stay_within_the_rounding_bound") {
        for (seed, (spec, dims)) in cases.iter().enumerate() {
            let (n, h, w) = *dims;
            let d = cpu_kernel::Dims::new(spec, n, (h, w), spec.output_size(h, w));
            let passes = cpu_kernel::choose(d, kernel).name();
            println!("{} {spec:?} on {dims:?}: {passes}", kernel.name());
            check_bf16_conv(spec, *dims, kernel, 60 + seed as u64);
        }
    }
}
