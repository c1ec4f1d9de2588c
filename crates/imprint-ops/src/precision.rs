//! Which number format the matrix products of convolutions and dense layers read: f32, or
//! bf16 with f32 sums (mixed precision), and which kernel computes them on this CPU.
//!
//! Only the products' inputs are rounded to bf16 (8 significant bits against f32's 24); every
//! product is summed in f32, and everything else (weights kept for the optimizer, its state,
//! batch-norm statistics, activations between ops, losses) stays f32. The setting belongs to
//! the thread that calls the ops, as PyTorch's `autocast` does: [`with_precision`] sets it for
//! a closure, and an op records its kernel when its forward pass runs, so the backward pass
//! uses the same one.

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;

/// The number format of the products' inputs: what a pipeline's `precision` key says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// Products on bf16 inputs with f32 sums; f32 elsewhere.
    Bf16,
}

impl Precision {
    /// The key's spelling: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("`{s}` is not a precision: use f32 or bf16")),
        }
    }
}

/// The kernel that computes the products of convolutions and dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProductKernel {
    /// f32 on f32 (AVX-512 where the CPU has it, else AVX2 or plain SIMD).
    F32,
    /// bf16 pairs into f32 sums with `vdpbf16ps` (AVX512-BF16: Intel since Cooper Lake, AMD
    /// since Zen 4).
    Avx512Bf16,
    /// bf16 tiles into f32 tiles with `tdpbf16ps` (AMX-BF16: Intel since Sapphire Rapids).
    AmxBf16,
}

impl ProductKernel {
    /// Every kernel, fastest first.
    pub const ALL: [ProductKernel; 3] = [
        ProductKernel::AmxBf16,
        ProductKernel::Avx512Bf16,
        ProductKernel::F32,
    ];

    /// Whether this CPU (and, for AMX, the operating system) runs the kernel.
    pub fn available(self) -> bool {
        match self {
            ProductKernel::F32 => true,
            #[cfg(target_arch = "x86_64")]
            ProductKernel::Avx512Bf16 => crate::matmul::avx512bf16::available(),
            #[cfg(target_arch = "x86_64")]
            ProductKernel::AmxBf16 => crate::matmul::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel of `precision` this CPU has. bf16 on a CPU with neither AMX-BF16
    /// nor AVX512-BF16 falls back to f32 (see [`Choice::fallback`]): a pipeline written for
    /// one machine still runs on another, and says so.
    pub fn best(precision: Precision) -> ProductKernel {
        match precision {
            Precision::F32 => ProductKernel::F32,
            Precision::Bf16 => ProductKernel::ALL
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(ProductKernel::F32),
        }
    }

    /// The format the kernel's inputs are rounded to.
    pub fn precision(self) -> Precision {
        match self {
            ProductKernel::F32 => Precision::F32,
            ProductKernel::Avx512Bf16 | ProductKernel::AmxBf16 => Precision::Bf16,
        }
    }

    /// A short name for records and messages.
    pub fn name(self) -> &'static str {
        match self {
            ProductKernel::F32 => "f32",
            ProductKernel::Avx512Bf16 => "bf16-avx512",
            ProductKernel::AmxBf16 => "bf16-amx",
        }
    }
}

impl fmt::Display for ProductKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProductKernel::F32 => "f32 products",
            ProductKernel::Avx512Bf16 => "bf16 products with f32 sums on AVX512-BF16 (vdpbf16ps)",
            ProductKernel::AmxBf16 => "bf16 products with f32 sums on AMX tiles (tdpbf16ps)",
        })
    }
}

/// What a job asked for and what this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub asked: Precision,
    pub kernel: ProductKernel,
}

impl Choice {
    /// The kernel [`ProductKernel::best`] picks for `asked`.
    pub fn of(asked: Precision) -> Self {
        Self {
            asked,
            kernel: ProductKernel::best(asked),
        }
    }

    /// Whether bf16 was asked for on a CPU without bf16 products, so f32 runs instead.
    pub fn fallback(&self) -> bool {
        self.asked != self.kernel.precision()
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kernel)?;
        if self.fallback() {
            write!(
                f,
                " ({} asked for; this CPU has neither AMX-BF16 nor AVX512-BF16)",
                self.asked
            )?;
        }
        Ok(())
    }
}

thread_local! {
    static CURRENT: Cell<ProductKernel> = const { Cell::new(ProductKernel::F32) };
}

/// The kernel the ops called on this thread use now.
pub fn current_kernel() -> ProductKernel {
    CURRENT.with(Cell::get)
}

/// Runs `f` with the ops it calls on this thread computing their products in `precision`, on
/// the fastest kernel this CPU has for it; the setting before is restored afterwards (also when
/// `f` panics). Returns `f`'s result.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    with_kernel(ProductKernel::best(precision), f)
}

/// [`with_precision`] with the kernel named, for tests and timings that compare kernels.
///
/// # Panics
/// When this CPU cannot run `kernel` (see [`ProductKernel::available`]).
pub fn with_kernel<R>(kernel: ProductKernel, f: impl FnOnce() -> R) -> R {
    assert!(kernel.available(), "this CPU cannot run {kernel}");
    struct Restore(ProductKernel);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(kernel)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_holds_inside_the_closure_only() {
        assert_eq!(current_kernel(), ProductKernel::F32);
        let inside = with_precision(Precision::Bf16, current_kernel);
        assert_eq!(inside, ProductKernel::best(Precision::Bf16));
        assert_eq!(current_kernel(), ProductKernel::F32);
        let caught = std::panic::catch_unwind(|| {
            with_kernel(ProductKernel::F32, || panic!("inside"));
        });
        assert!(caught.is_err());
        assert_eq!(current_kernel(), ProductKernel::F32);
    }

    #[test]
    fn precisions_parse_and_print_as_the_key_spells_them() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn a_bf16_choice_says_when_it_falls_back() {
        let choice = Choice {
            asked: Precision::Bf16,
            kernel: ProductKernel::F32,
        };
        assert!(choice.fallback());
        assert!(choice
            .to_string()
            .contains("neither AMX-BF16 nor AVX512-BF16"));
        assert!(!Choice::of(Precision::F32).fallback());
        let best = Choice::of(Precision::Bf16);
        println!("bf16 on this CPU: {best}");
        assert_eq!(best.fallback(), best.kernel == ProductKernel::F32);
    }
}
