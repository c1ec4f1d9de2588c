//! Prints each tensor of a checkpoint: name, source dtype, shape and its first three values.
//!
//! cargo run -p imprint-torch --example read_checkpoint -- FILE

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: read_checkpoint FILE");
        return ExitCode::FAILURE;
    };
    match imprint_torch::read_checkpoint(&path) {
        Ok(tensors) => {
            for t in &tensors {
                let first: Vec<f32> = t.data.iter().take(3).copied().collect();
                println!("{} {:?} {:?} {:?}", t.name, t.dtype, t.shape, first);
            }
            println!("{} tensors", tensors.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
