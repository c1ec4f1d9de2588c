use thiserror::Error;

/// Why an op's hyper-parameters, or the tensors handed to it, do not fit together.
///
/// The ops themselves return the device's error type, so they panic with this error's message;
/// call the spec's `validate` / `output_size_checked` first to handle it gracefully.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})")]
    Groups {
        groups: usize,
        in_channels: usize,
        out_channels: usize,
    },
    #[error("output_padding {output_padding:?} must be smaller than stride {stride:?} or dilation {dilation:?} in each dimension")]
    OutputPadding {
        output_padding: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
    },
    #[error("padding {padding:?} must be at most half the kernel {kernel:?}")]
    PoolPadding {
        padding: (usize, usize),
        kernel: (usize, usize),
    },
    #[error("input has {got} channels but the spec expects {expected}")]
    Channels { expected: usize, got: usize },
    #[error("input of {h}x{w} pixels is too small: the output would be empty")]
    InputTooSmall { h: usize, w: usize },
    #[error("{what} has {got} elements but the spec needs {expected}")]
    ParamLen {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

pub(crate) fn nonzero(pairs: &[(&'static str, usize)]) -> Result<(), SpecError> {
    match pairs.iter().find(|(_, v)| *v == 0) {
        Some(&(what, _)) => Err(SpecError::Zero { what }),
        None => Ok(()),
    }
}
