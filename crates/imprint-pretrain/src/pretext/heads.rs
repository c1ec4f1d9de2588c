//! Heads shared by the methods that project codes before their loss.

use imprint_data::ImageShape;
use imprint_nn::layers::{Act, BatchNorm2d, Layer};
use imprint_nn::{ImprintDevice, Linear, Matrix, Pass, Sequential};
use rand::Rng;

/// `Linear(input, hidden)`, batch norm, ReLU, `Linear(hidden, output)`: BYOL's projector and
/// predictor (section 3.3 of the paper; lightly's `BYOLProjectionHead`) and the two-layer
/// head lightly's CIFAR-10 benchmark gives DINO. The batch norm of rows is a 2-D one over maps
/// of 1x1, which normalises each feature over the batch alike.
pub(crate) fn mlp_bn<D: ImprintDevice>(
    dev: &D,
    input: usize,
    hidden: usize,
    output: usize,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let point = ImageShape {
        channels: hidden,
        height: 1,
        width: 1,
    };
    Sequential::indexed(vec![
        Layer::Linear(Linear::new(dev, input, hidden, rng)),
        Layer::Unflatten(point),
        Layer::BatchNorm2d(BatchNorm2d::new(dev, hidden)),
        Layer::Relu,
        Layer::Flatten,
        Layer::Linear(Linear::new(dev, hidden, output, rng)),
    ])
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
