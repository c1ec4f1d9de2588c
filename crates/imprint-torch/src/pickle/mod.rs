//! A pickle reader that executes nothing.
//!
//! Why a machine of our own rather than a crate: the pickle crates were weighed for reading
//! torch's pickles without running them. `serde-pickle` (well kept) folds every global it does
//! not know into one opaque value and stops at persistent ids, so neither the allow-list nor
//! the storages can be seen through it; `deser-pickle` records globals but does not support
//! persistent ids either; `repugnant-pickle` exposes opcodes, but is version 0.0.1 and calls
//! itself best-effort scraping. A state dict needs about forty opcodes of protocol 2, and a
//! small interpreter here keeps the safety decisions (which globals may be named, what a call
//! builds) in one place that can be read in full.

mod allow;
mod calls;
mod machine;
mod opcode;
mod value;

pub(crate) use machine::{unpickle, Unpickled};
pub(crate) use value::{Heap, Storage, TensorSpec, Value};
