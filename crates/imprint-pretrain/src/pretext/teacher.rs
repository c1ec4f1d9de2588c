//! Momentum teachers (BYOL, DINO): copies of the student's nets that the optimizer never sees,
//! moved towards the student after each step.

use imprint_nn::tree::ParamsExt;
use imprint_nn::{ImprintDevice, Kind, Params};

/// A copy of `net` whose every tensor is a buffer: saved and restored with the run, never
/// handed to an optimizer.
pub(crate) fn frozen<D: ImprintDevice, P: Params<D> + Clone>(net: &P) -> P {
    let mut copy = net.clone();
    copy.visit_mut("", &mut |_, v| v.kind = Kind::Buffer);
    copy
}

/// `teacher = momentum * teacher + (1 - momentum) * student` for each tensor the optimizer
/// trains in `student` (lightly's `update_momentum`); the teacher's batch-norm statistics stay
/// its own, gathered by its own forward passes, as in BYOL and DINO. `teacher` is a
/// [`frozen`] copy of a net built as `student` is.
pub(crate) fn ema<D: ImprintDevice, P: Params<D>>(teacher: &mut P, student: &P, momentum: f32) {
    let students = student.vars("");
    let mut at = students.iter();
    teacher.visit_mut("", &mut |name, t| {
        let (student_name, s) = at.next().expect("the teacher is a copy of the student");
        debug_assert_eq!(name, student_name);
        if s.kind == Kind::Param {
            t.value = t.value.clone() * momentum + s.value.clone() * (1.0 - momentum);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;
    use imprint_nn::Linear;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// With momentum 0.75 each moved weight is 0.75 t + 0.25 s, exact in binary for these
    /// values: (1, 5) -> 2, (2, -2) -> 1, (-4, 4) -> -2, (0.5, 8.5) -> 2.5.
    #[test]
    fn the_update_is_exact_and_leaves_the_student_alone() {
        let dev = Cpu::default();
        let student = Linear::from_values(&dev, vec![5.0, -2.0, 4.0], vec![8.5]);
        let mut teacher = frozen(&Linear::from_values(&dev, vec![1.0, 2.0, -4.0], vec![0.5]));
        ema(&mut teacher, &student, 0.75);
        assert_eq!(teacher.weight.value.as_vec(), [2.0, 1.0, -2.0]);
        assert_eq!(teacher.bias.value.as_vec(), [2.5]);
        assert_eq!(student.weight.value.as_vec(), [5.0, -2.0, 4.0]);
        // Momentum 1 keeps the teacher; 0 makes it the student.
        ema(&mut teacher, &student, 1.0);
        assert_eq!(teacher.weight.value.as_vec(), [2.0, 1.0, -2.0]);
        ema(&mut teacher, &student, 0.0);
        assert_eq!(teacher.weight.value.as_vec(), [5.0, -2.0, 4.0]);
    }

    #[test]
    fn a_frozen_copy_has_no_parameters() {
        let dev = Cpu::default();
        let net = Linear::new(&dev, 3, 2, &mut ChaCha8Rng::seed_from_u64(0));
        let mut teacher = frozen(&net);
        assert_eq!(net.param_count(), 8);
        assert_eq!(teacher.param_count(), 0);
        assert!(teacher.trainable_mut("").is_empty());
        assert_eq!(teacher.named_tensors("t"), net.named_tensors("t"));
    }
}
