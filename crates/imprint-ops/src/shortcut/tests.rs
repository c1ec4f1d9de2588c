use super::*;
use crate::test_util::{check_finite_differences, random, rng};

#[test]
fn keeps_every_other_pixel_between_zero_channels() {
    let dev = Cpu::default();
    // One image, one channel of 3x4: 0..12.
    let x: Tensor4<Cpu> = dev.tensor_from_vec((0..12).map(|v| v as f32).collect(), (1, 1, 3, 4));
    let y = subsample_pad_channels(x, 2, (1, 2)).unwrap();
    assert_eq!(*y.shape(), (1, 4, 2, 2));
    let zeros = [0.0; 4];
    let kept = [0.0, 2.0, 8.0, 10.0];
    let want: Vec<f32> = [zeros, kept, zeros, zeros].concat();
    assert_eq!(y.as_vec(), want);
}

#[test]
fn gradient_matches_finite_differences() {
    let dev = Cpu::default();
    let mut g = rng(3);
    let shape = (2, 3, 5, 4);
    let xs = random(&mut g, 2 * 3 * 5 * 4);
    let r = random(&mut g, 2 * 7 * 3 * 2);
    let x: Tensor4<Cpu> = dev.tensor_from_vec(xs.clone(), shape);
    let y = subsample_pad_channels(x.leaky_trace(), 2, (2, 2)).unwrap();
    let weights: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), *y.shape());
    let grads = (y * weights).sum::<(), _>().backward();
    let forward = |inputs: &[Vec<f32>]| {
        let x: Tensor4<Cpu> = dev.tensor_from_vec(inputs[0].clone(), shape);
        subsample_pad_channels(x, 2, (2, 2)).unwrap().as_vec()
    };
    check_finite_differences("shortcut", &[xs], &[grads.get(&x).as_vec()], &r, forward);
}
