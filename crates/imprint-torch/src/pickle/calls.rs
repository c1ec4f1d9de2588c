//! What the allowed globals do when a pickle calls them (REDUCE): describe the value Python
//! would have built, without building it.

use super::allow::Global;
use super::value::{Heap, TensorSpec, Value};
use crate::error::{Checked, Problem};
use std::rc::Rc;

/// More dimensions than any real tensor has; also bounds what one call can allocate.
const MAX_DIMS: usize = 64;

pub(crate) fn call(callable: &Value, args: &Value, heap: &mut Heap) -> Checked<Value> {
    let Value::Global(global) = callable else {
        return Err(Problem::Pickle(format!(
            "REDUCE calls {}, not a function",
            callable.describe()
        )));
    };
    let Value::Tuple(args) = *args else {
        return Err(Problem::Pickle(format!(
            "REDUCE passes {} as arguments, not a tuple",
            args.describe()
        )));
    };
    match global {
        Global::OrderedDict => {
            if !heap.seq(args).is_empty() {
                return Err(Problem::Pickle(
                    "collections.OrderedDict is called with arguments; torch.save passes none"
                        .into(),
                ));
            }
            Ok(Value::Dict(heap.new_dict(Vec::new())))
        }
        Global::RebuildTensor => match heap.seq(args) {
            [storage, offset, size, stride] => tensor(heap, storage, offset, size, stride),
            other => Err(arity("_rebuild_tensor", "4", other.len())),
        },
        Global::RebuildTensorV2 => match heap.seq(args) {
            [storage, offset, size, stride, _requires_grad, _hooks] => {
                tensor(heap, storage, offset, size, stride)
            }
            [storage, offset, size, stride, _requires_grad, _hooks, metadata] => {
                plain_metadata(heap, metadata)?;
                tensor(heap, storage, offset, size, stride)
            }
            other => Err(arity("_rebuild_tensor_v2", "6 or 7", other.len())),
        },
        // A parameter is its tensor; requires_grad and (always empty) hooks do not matter here.
        Global::RebuildParameter => match heap.seq(args) {
            [tensor @ Value::Tensor(_), _requires_grad, _hooks] => Ok(tensor.clone()),
            [data, _, _] => Err(Problem::Pickle(format!(
                "torch._utils._rebuild_parameter wraps {}, not a tensor",
                data.describe()
            ))),
            other => Err(arity("_rebuild_parameter", "3", other.len())),
        },
        Global::StorageType(dtype) => Err(Problem::Pickle(format!(
            "the {dtype:?} storage type is called; torch.save only names storage types in \
             persistent ids"
        ))),
    }
}

fn arity(function: &str, expected: &str, found: usize) -> Problem {
    Problem::Pickle(format!(
        "torch._utils.{function} takes {expected} arguments, the pickle passes {found}"
    ))
}

fn tensor(
    heap: &Heap,
    storage: &Value,
    offset: &Value,
    size: &Value,
    stride: &Value,
) -> Checked<Value> {
    let Value::Storage(storage) = storage else {
        return Err(Problem::Pickle(format!(
            "a tensor is rebuilt from {}, not a storage",
            storage.describe()
        )));
    };
    let offset = index(offset, "storage offset")?;
    let shape = indices(heap, size, "size")?;
    let stride = indices(heap, stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(Problem::Pickle(format!(
            "a tensor has {} sizes but {} strides",
            shape.len(),
            stride.len()
        )));
    }
    Ok(Value::Tensor(Rc::new(TensorSpec {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    })))
}

fn indices(heap: &Heap, value: &Value, what: &str) -> Checked<Vec<usize>> {
    let Value::Tuple(id) = *value else {
        return Err(Problem::Pickle(format!(
            "a tensor's {what} is {}, not a tuple",
            value.describe()
        )));
    };
    let items = heap.seq(id);
    if items.len() > MAX_DIMS {
        return Err(Problem::Unsupported(format!(
            "a tensor has {} dimensions; at most {MAX_DIMS} are read",
            items.len()
        )));
    }
    items.iter().map(|item| index(item, what)).collect()
}

fn index(value: &Value, what: &str) -> Checked<usize> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| {
            Problem::Pickle(format!("a tensor's {what} holds {i}, which is negative"))
        }),
        other => Err(Problem::Pickle(format!(
            "a tensor's {what} holds {}, not an int",
            other.describe()
        ))),
    }
}

/// torch passes tensor metadata only for negated or conjugated views, whose values would
/// need the same transformation; those are refused rather than read wrong.
fn plain_metadata(heap: &Heap, metadata: &Value) -> Checked<()> {
    match *metadata {
        Value::None => Ok(()),
        Value::Dict(id) if heap.dict(id).is_empty() => Ok(()),
        Value::Dict(_) => Err(Problem::Unsupported(
            "tensor metadata (a negated or conjugated view) is not supported".into(),
        )),
        ref other => Err(Problem::Pickle(format!(
            "a tensor's metadata is {}, not a dict",
            other.describe()
        ))),
    }
}
