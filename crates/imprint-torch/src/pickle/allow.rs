//! The allow-list: the only globals a checkpoint's pickle may name. Python would import and
//! call whatever a pickle names; here anything but these is refused before anything is built.

use crate::dtype::Dtype;
use crate::error::{Checked, Problem};

/// A global on the allow-list.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`: state dicts and the (empty) backward hooks of tensors.
    OrderedDict,
    /// `torch._utils._rebuild_tensor`: tensors in files from PyTorch before 0.4.
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v2`: tensors since PyTorch 0.4.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`: an `nn.Parameter` around a tensor.
    RebuildParameter,
    /// `torch.FloatStorage` and its kin, named inside persistent ids.
    StorageType(Dtype),
}

/// The allowed global `module.name`, or why it is refused.
pub(crate) fn resolve(module: &str, name: &str) -> Checked<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", storage) => match Dtype::of_storage_type(storage) {
            Some(dtype) => Ok(Global::StorageType(dtype)),
            // Harmless, but its elements would not fit the f32 conversion.
            None if storage.ends_with("Storage") => Err(Problem::Unsupported(format!(
                "storage type torch.{} is not supported",
                storage.escape_debug()
            ))),
            None => Err(refused(module, name)),
        },
        _ => Err(refused(module, name)),
    }
}

fn refused(module: &str, name: &str) -> Problem {
    let dotted = format!("{module}.{name}");
    let escaped: String = dotted.escape_debug().collect();
    // Backticks only where escaping changed something, so that os.system reads plainly.
    Problem::Refused(if escaped == dotted {
        dotted
    } else {
        format!("`{escaped}`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_only_tensor_rebuilding_and_containers() {
        assert_eq!(
            resolve("torch", "HalfStorage"),
            Ok(Global::StorageType(Dtype::F16))
        );
        assert_eq!(
            resolve("collections", "OrderedDict"),
            Ok(Global::OrderedDict)
        );
        assert_eq!(
            resolve("os", "system"),
            Err(Problem::Refused("os.system".into()))
        );
        assert_eq!(
            resolve("torch", "load"),
            Err(Problem::Refused("torch.load".into()))
        );
        assert_eq!(
            resolve("builtins", "eval\n"),
            Err(Problem::Refused("`builtins.eval\\n`".into()))
        );
        assert!(matches!(
            resolve("torch", "ComplexFloatStorage"),
            Err(Problem::Unsupported(_))
        ));
    }
}
