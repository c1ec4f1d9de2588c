//! Operations dfdx lacks on a stable compiler, each a dfdx op on the tape with a hand-written
//! backward. One folder per op, the device trait in `mod.rs`, the CPU kernel beside it.

pub mod linear;

pub use linear::{linear, Activation, LinearKernel};
