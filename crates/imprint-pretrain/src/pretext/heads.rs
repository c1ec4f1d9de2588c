//! Heads shared by the methods that project codes before their loss.

use imprint_data::ImageShape;
use imprint_nn::layers::{Act, BatchNorm2d, Layer};
use imprint_nn::{ImprintDevice, Linear, Matrix, Pass, Sequential};
use rand::Rng;

/// Linear layers through `widths` (`[input, hidden, ..., output]`), each but the last followed
/// by batch norm and ReLU: BYOL's projector and predictor (`[in, hidden, out]`, section 3.3 of
/// the paper; lightly's `BYOLProjectionHead`), the two-layer head lightly's CIFAR-10 benchmark
/// gives DINO, VICReg's three-layer expander, SimCLR's head (the contrastive term's with
/// `batch_norm`). The batch norm of rows is a 2-D one over maps of 1x1, which normalises each
/// feature over the batch alike.
pub(crate) fn mlp_bn<D: ImprintDevice>(
    dev: &D,
    widths: &[usize],
    rng: &mut impl Rng,
) -> Sequential<D> {
    let mut layers = Vec::new();
    for (i, pair) in widths.windows(2).enumerate() {
        let (input, output) = (pair[0], pair[1]);
        layers.push(Layer::Linear(Linear::new(dev, input, output, rng)));
        if i + 2 < widths.len() {
            let point = ImageShape {
                channels: output,
                height: 1,
                width: 1,
            };
            layers.extend([
                Layer::Unflatten(point),
                Layer::BatchNorm2d(BatchNorm2d::new(dev, output)),
                Layer::Relu,
                Layer::Flatten,
            ]);
        }
    }
    Sequential::indexed(layers)
}

/// `head` applied to the rows `z` (a code, so the gradient flows back into it).
pub(crate) fn project<D: ImprintDevice, T>(
    head: &mut Sequential<D>,
    z: Matrix<D, T>,
    pass: &mut Pass,
) -> Matrix<D, T>
where
    T: dfdx::prelude::Tape<f32, D> + dfdx::prelude::Merge<T>,
{
    head.forward(Act::Flat(z), pass, true).into_flat()
}
