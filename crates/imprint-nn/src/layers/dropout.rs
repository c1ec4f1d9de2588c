//! Inverted dropout: in training each value is zeroed with probability `p` and the survivors
//! scaled by `1 / (1 - p)`; in eval mode it passes values through.

use crate::{ImprintDevice, Pass};
use dfdx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn forward<S: Shape, D: ImprintDevice, T: Tape<f32, D>>(
        &self,
        x: Tensor<S, f32, D, T>,
        pass: &mut Pass,
    ) -> Tensor<S, f32, D, T> {
        if !pass.is_train() || self.p == 0.0 {
            return x;
        }
        let keep = 1.0 / (1.0 - self.p) as f32;
        let shape = *x.shape();
        let mask = pass
            .drops(shape.num_elements(), self.p)
            .into_iter()
            .map(|drop| if drop { 0.0 } else { keep })
            .collect();
        let mask = x.device().tensor_from_vec(mask, shape);
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn drops_in_training_only_and_scales_survivors() {
        let dev = Cpu::default();
        let x: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(vec![2.0; 400], (20, 20));
        let d = Dropout { p: 0.25 };
        assert_eq!(d.forward(x.clone(), &mut Pass::eval()).as_vec(), x.as_vec());
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let y = d.forward(x, &mut Pass::train(&mut rng)).as_vec();
        assert!(y.iter().all(|&v| v == 0.0 || (v - 2.0 / 0.75).abs() < 1e-6));
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!(
            (60..140).contains(&zeros),
            "{zeros} of 400 dropped at p = 0.25"
        );
    }
}
